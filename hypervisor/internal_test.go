package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func TestParsePath(t *testing.T) {
	cases := []struct {
		in      string
		want    dsPath
		wantErr bool
	}{
		{"/vmfs/volumes/datastore1", dsPath{"datastore1", ""}, false},
		{"/vmfs/volumes/datastore1/", dsPath{"datastore1", ""}, false},
		{"/vmfs/volumes/datastore1/vcl/images", dsPath{"datastore1", "vcl/images"}, false},
		{"[datastore1]", dsPath{"datastore1", ""}, false},
		{"[datastore1] vms", dsPath{"datastore1", "vms"}, false},
		{"[ds 2] vms/x", dsPath{"ds 2", "vms/x"}, false},
		{"/etc/passwd", dsPath{}, true},
		{"/vmfs/volumes/", dsPath{}, true},
		{"/vmfs/volumes/ds/../x", dsPath{}, true},
		{"[ds] a/../../b", dsPath{}, true},
		{"relative/path", dsPath{}, true}, // a name, not a path
		{"[ds] $(reboot)", dsPath{}, true},
		// vcl.sql's form: a bare datastore name is its root.
		{"datastore1", dsPath{"datastore1", ""}, false},
		{"datastore1;reboot", dsPath{}, true},
		{"..", dsPath{}, true},
		{"ds name", dsPath{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parsePath(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	p := dsPath{"ds", "images"}
	if s := p.Join("img", "img.vmdk").String(); s != "[ds] images/img/img.vmdk" {
		t.Errorf("Join = %q", s)
	}
	if s := (dsPath{"ds", ""}).Join("a").String(); s != "[ds] a" {
		t.Errorf("Join on root = %q", s)
	}
	if s := (dsPath{"ds", "a"}).Dir().String(); s != "[ds]" {
		t.Errorf("Dir = %q", s)
	}
}

func TestSlotPattern(t *testing.T) {
	re := slotPattern("pc1")
	for name, want := range map[string]bool{
		"pc1_12-v3": true, "pc1_12-v3.vclq-tmp-abc": true, "pc1_1-v0": true,
		"pc10_12-v3": false, "pc1_x-v3": false, "xpc1_12-v3": false, "pc1-12-v3": false, "pc1_12": false,
	} {
		if re.MatchString(name) != want {
			t.Errorf("%s: match = %v, want %v", name, !want, want)
		}
	}
}

func TestClassify(t *testing.T) {
	soapFault := func(f types.BaseMethodFault) error {
		sf := &soap.Fault{Code: "ServerFaultCode", String: "x"}
		sf.Detail.Fault = f
		return soap.WrapSoapFault(sf)
	}
	taskFault := func(f types.BaseMethodFault) error {
		return task.Error{LocalizedMethodFault: &types.LocalizedMethodFault{Fault: f, LocalizedMessage: "task failed"}}
	}
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"NotFound", soapFault(&types.NotFound{}), ErrNotFound},
		{"ManagedObjectNotFound", soapFault(&types.ManagedObjectNotFound{}), ErrNotFound},
		{"FileNotFound in a task", taskFault(&types.FileNotFound{}), ErrNotFound},
		{"NoPermission", soapFault(&types.NoPermission{}), ErrPermission},
		{"NotAuthenticated", soapFault(&types.NotAuthenticated{}), errNotAuthenticated},
		{"InvalidLogin", soapFault(&types.InvalidLogin{}), ErrAuth},
		{"InsufficientResources", soapFault(&types.InsufficientResourcesFault{}), ErrInsufficientResources},
		{"InsufficientMemory in a task", taskFault(&types.InsufficientMemoryResourcesFault{}), ErrInsufficientResources},
		{"NoDiskSpace", taskFault(&types.NoDiskSpace{}), ErrInsufficientResources},
		{"TaskInProgress", soapFault(&types.TaskInProgress{}), ErrTransient},
		{"TaskInProgress in a task", taskFault(&types.TaskInProgress{}), ErrTransient},
		{"Timedout", soapFault(&types.Timedout{}), ErrTransient},
		{"HostCommunication", soapFault(&types.HostCommunication{}), ErrTransient},
		{"HostNotReachable", soapFault(&types.HostNotReachable{}), ErrTransient},
		{"FileAlreadyExists", taskFault(&types.FileAlreadyExists{}), ErrExists},
		{"NotSupported", soapFault(&types.NotSupported{}), ErrUnsupported},
		{"InvalidPowerState", taskFault(&types.InvalidPowerState{}), ErrInvalidState},
		{"InvalidArgument", soapFault(&types.InvalidArgument{}), ErrInvalid},
		{"other fault", soapFault(&types.SystemError{}), ErrFault},
		{"connection refused", &url.Error{Op: "Post", URL: "x", Err: io.ErrUnexpectedEOF}, ErrTransient},
		{"per-call timeout", fmt.Errorf("call: %w", context.DeadlineExceeded), ErrTransient},
		{"thumbprint", fmt.Errorf("x: %w", ErrThumbprint), ErrThumbprint},
		{"an OpError keeps its kind", &OpError{Kind: ErrConflict, Err: errors.New("x")}, ErrConflict},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(tc.err); got != tc.want {
				t.Fatalf("classify(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestClassifyHTTPStatus drives govmomi's SOAP client against servers answering with
// HTTP errors, so the classified error is the one govmomi really returns.
func TestClassifyHTTPStatus(t *testing.T) {
	for _, tc := range []struct {
		status int
		want   error
	}{
		{http.StatusServiceUnavailable, ErrTransient},
		{http.StatusBadGateway, ErrTransient},
		{http.StatusForbidden, ErrFault},
	} {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "busy", tc.status)
			}))
			defer srv.Close()
			u, _ := url.Parse(srv.URL + "/sdk")
			c := soap.NewClient(u, true)
			_, err := methods.GetCurrentTime(context.Background(), c)
			if err == nil {
				t.Fatal("no error")
			}
			if got := classify(err); got != tc.want {
				t.Fatalf("classify(%v) = %v, want %v", err, got, tc.want)
			}
		})
	}
}

func TestOpErrorMessage(t *testing.T) {
	sf := &soap.Fault{String: "Permission to perform this operation was denied."}
	sf.Detail.Fault = &types.NoPermission{}
	err := error(&OpError{Host: "esx1", Slot: "pc1", Op: "CreateVM pc1_12-v3", Attempts: 3, Kind: ErrPermission, Err: soap.WrapSoapFault(sf)})
	want := "host esx1 slot pc1: CreateVM pc1_12-v3: permission denied: NoPermission: Permission to perform this operation was denied. (after 3 attempts)"
	if err.Error() != want {
		t.Fatalf("got  %q\nwant %q", err.Error(), want)
	}
	if !errors.Is(err, ErrPermission) {
		t.Fatal("errors.Is(ErrPermission) is false")
	}
}

func TestBackoffIsBounded(t *testing.T) {
	c := &ESX{cfg: HostConfig{Backoff: 100, BackoffMax: 1000}}
	for attempt := 1; attempt < 80; attempt++ {
		d := c.backoff(attempt)
		if d <= 0 || d > 1000 {
			t.Fatalf("attempt %d: backoff %v out of (0, 1000]", attempt, d)
		}
	}
}

// datastoreUUID reads the UUID ESX reports in every datastore's URL, or a VMFS
// volume's; a local path (vcsim's URL) or a URL with more path has none.
func TestDatastoreUUID(t *testing.T) {
	const u = "5f1b2c3d-4e5f6a7b-8c9d-0a1b2c3d4e5f"
	for _, tc := range []struct {
		name string
		ds   mo.Datastore
		want string
	}{
		{"ESX url", mo.Datastore{Summary: types.DatastoreSummary{Url: "ds:///vmfs/volumes/" + u + "/"}}, u},
		{"ESX url without slash", mo.Datastore{Summary: types.DatastoreSummary{Url: "ds:///vmfs/volumes/" + u}}, u},
		{"NFS url", mo.Datastore{Summary: types.DatastoreSummary{Url: "ds:///vmfs/volumes/3bd9a3d0-4a5e02ba/"}}, "3bd9a3d0-4a5e02ba"},
		{"VMFS info", mo.Datastore{Summary: types.DatastoreSummary{Url: "/tmp/ds1"}, Info: &types.VmfsDatastoreInfo{Vmfs: &types.HostVmfsVolume{Uuid: u}}}, u},
		{"local path", mo.Datastore{Summary: types.DatastoreSummary{Url: "/tmp/ds1"}, Info: &types.LocalDatastoreInfo{}}, ""},
		{"url with more path", mo.Datastore{Summary: types.DatastoreSummary{Url: "ds:///vmfs/volumes/" + u + "/sub/"}}, ""},
	} {
		if got := datastoreUUID(tc.ds); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
