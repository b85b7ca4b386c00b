package hypervisor_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/messages"
)

func TestTLS(t *testing.T) {
	l := esxsim.StartTB(t, esxsim.Options{Hosts: 2})
	h, other := l.Hosts[0], l.Hosts[1]
	cases := []struct {
		name    string
		mod     func(*hypervisor.HostConfig)
		wantErr error
	}{
		{"pinned SHA-256 thumbprint", func(*hypervisor.HostConfig) {}, nil},
		{"pinned SHA-1 thumbprint", func(c *hypervisor.HostConfig) { c.Thumbprint = h.ThumbprintSHA1 }, nil},
		{"thumbprint without colons, lower case", func(c *hypervisor.HostConfig) {
			c.Thumbprint = strings.ToLower(strings.ReplaceAll(h.Thumbprint, ":", ""))
		}, nil},
		{"another host's thumbprint", func(c *hypervisor.HostConfig) { c.Thumbprint = other.Thumbprint }, hypervisor.ErrThumbprint},
		{"no thumbprint, self-signed certificate", func(c *hypervisor.HostConfig) { c.Thumbprint = "" }, hypervisor.ErrThumbprint},
		{"insecure when configured explicitly", func(c *hypervisor.HostConfig) { c.Thumbprint, c.Insecure = "", true }, nil},
		{"wrong password", func(c *hypervisor.HostConfig) { c.Password = "nope" }, hypervisor.ErrAuth},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := client(t, h, tc.mod)
			calls, _ := h.FaultStats()
			err := c.Ping(testCtx(t))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Ping: err = %v, want %v", err, tc.wantErr)
			}
			if errors.Is(tc.wantErr, hypervisor.ErrThumbprint) {
				if now, _ := h.FaultStats(); now != calls {
					t.Errorf("a refused certificate still let %d calls through", now-calls)
				}
				if !strings.Contains(err.Error(), "host "+h.Name) {
					t.Errorf("error %q does not name the host", err)
				}
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		cfg     hypervisor.HostConfig
		wantErr bool
	}{
		{"password file", hypervisor.HostConfig{URL: "esx1.example.org", Username: "root", PasswordFile: pwFile}, false},
		{"credentials in URL", hypervisor.HostConfig{URL: "https://root:pw@esx1.example.org/sdk"}, false},
		{"no URL", hypervisor.HostConfig{Username: "root", Password: "x"}, true},
		{"http", hypervisor.HostConfig{URL: "http://esx1/sdk", Username: "root", Password: "x"}, true},
		{"no password", hypervisor.HostConfig{URL: "esx1", Username: "root"}, true},
		{"bad thumbprint", hypervisor.HostConfig{URL: "esx1", Username: "root", Password: "x", Thumbprint: "AB:CD"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hypervisor.New(tc.cfg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, hypervisor.ErrInvalid) {
				t.Errorf("err = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestPasswordFileAndReloginAfterSessionLoss(t *testing.T) {
	h := lab(t)
	pw := filepath.Join(t.TempDir(), "esx-password")
	if err := os.WriteFile(pw, []byte(h.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := client(t, h, func(cfg *hypervisor.HostConfig) { cfg.Password, cfg.PasswordFile = "", pw })
	ctx := testCtx(t)
	spec := hypervisor.LoadSpec{Slot: slot("pc30", 40), Profile: profile(messages.VMDiskShared), Image: image(baseImage, 12, 3)}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	// The host ends the worker's session, as ESX does after its idle timeout.
	obs := observer(t, h)
	var sm mo.SessionManager
	if err := property.DefaultCollector(obs).RetrieveOne(ctx, *obs.ServiceContent.SessionManager, []string{"sessionList"}, &sm); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range sm.SessionList {
		if s.UserName == h.Username {
			keys = append(keys, s.Key)
		}
	}
	if len(keys) == 0 {
		t.Fatal("no worker session on the host")
	}
	if err := session.NewManager(obs).TerminateSession(ctx, keys); err != nil {
		t.Fatal(err)
	}
	logins := h.Calls("Login")
	if err := c.Load(ctx, spec, nil); err != nil {
		t.Fatalf("load after the session was terminated: %v", err)
	}
	if n := h.Calls("Login") - logins; n != 1 {
		t.Errorf("%d logins after the session was terminated, want 1", n)
	}
	verifyLoaded(t, h, spec)
}

func TestStatusAndPower(t *testing.T) {
	h := lab(t)
	c := client(t, h)
	ctx := testCtx(t)
	spec := hypervisor.LoadSpec{Slot: slot("pc31", 41), Profile: profile(messages.VMDiskShared), Image: image(baseImage, 12, 3)}

	st, err := c.Status(ctx, spec.Slot, spec.Profile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Registered || st.Present || st.Carries(spec.Slot, spec.Image) {
		t.Fatalf("empty slot status = %+v", st)
	}
	if err := c.PowerOn(ctx, spec.Slot); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("PowerOn on an empty slot: err = %v, want ErrNotFound", err)
	}

	if err := c.Load(ctx, spec, nil); err != nil {
		t.Fatal(err)
	}
	name := hypervisor.VMName(spec.Slot, spec.Image)
	st, err = c.Status(ctx, spec.Slot, spec.Profile)
	if err != nil {
		t.Fatal(err)
	}
	want := hypervisor.VMStatus{Name: name, Registered: true, Present: true, PowerState: hypervisor.PoweredOn,
		ImageID: 12, ImageRevisionID: spec.Image.RevisionID, ComputerID: 41, ImageName: baseImage}
	if st.Name != want.Name || st.Registered != want.Registered || st.Present != want.Present || st.PowerState != want.PowerState ||
		st.ImageID != want.ImageID || st.ImageRevisionID != want.ImageRevisionID || st.ComputerID != want.ComputerID ||
		st.ImageName != want.ImageName || len(st.Others) != 0 {
		t.Fatalf("status = %+v, want %+v", st, want)
	}
	if !st.Carries(spec.Slot, spec.Image) || st.Carries(spec.Slot, image("other", 99, 1)) {
		t.Errorf("Carries is wrong for %+v", st)
	}

	steps := []struct {
		name string
		do   func() error
		want types.VirtualMachinePowerState
	}{
		{"power off", func() error { return c.PowerOff(ctx, spec.Slot) }, types.VirtualMachinePowerStatePoweredOff},
		{"power off again", func() error { return c.PowerOff(ctx, spec.Slot) }, types.VirtualMachinePowerStatePoweredOff},
		{"power on", func() error { return c.PowerOn(ctx, spec.Slot) }, types.VirtualMachinePowerStatePoweredOn},
		{"power on again", func() error { return c.PowerOn(ctx, spec.Slot) }, types.VirtualMachinePowerStatePoweredOn},
		{"reset", func() error { return c.Reset(ctx, spec.Slot) }, types.VirtualMachinePowerStatePoweredOn},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if ps := powerState(t, h, name); ps != s.want {
			t.Fatalf("after %s: %s, want %s", s.name, ps, s.want)
		}
	}

	// A second registered VM of the slot makes power calls ambiguous.
	rawVM(t, h, "datastore1", "vms/pc31_1-v1", "pc31_1-v1", false)
	if err := c.PowerOff(ctx, spec.Slot); !errors.Is(err, hypervisor.ErrConflict) {
		t.Fatalf("PowerOff with two VMs: err = %v, want ErrConflict", err)
	}
	st, err = c.Status(ctx, spec.Slot, spec.Profile)
	if err != nil || len(st.Others) != 1 {
		t.Fatalf("status with two VMs = %+v, %v", st, err)
	}

	if err := c.Remove(ctx, spec.Slot, spec.Profile); err != nil {
		t.Fatal(err)
	}
	if n := len(slotVMs(t, h, "pc31")); n != 0 {
		t.Fatalf("%d VMs after Remove", n)
	}
	st, err = c.Status(ctx, spec.Slot, spec.Profile)
	if err != nil || st.Registered || st.Present {
		t.Fatalf("status after Remove = %+v, %v", st, err)
	}
}

func TestImages(t *testing.T) {
	h := lab(t)
	c := client(t, h)
	ctx := testCtx(t)
	p := profile(messages.VMDiskShared)
	ok, err := c.ImageExists(ctx, p, baseImage)
	if err != nil || !ok {
		t.Fatalf("ImageExists(%s) = %v, %v", baseImage, ok, err)
	}
	ok, err = c.ImageExists(ctx, p, "nope")
	if err != nil || ok {
		t.Fatalf("ImageExists(nope) = %v, %v", ok, err)
	}
	files := browse(t, h, "datastore1", "images/"+baseImage)
	want := (files[baseImage+".vmdk"] + files[baseImage+"-flat.vmdk"] + 1<<20 - 1) >> 20
	if size, err := c.ImageSize(ctx, p, baseImage); err != nil || size != want {
		t.Fatalf("ImageSize = %d, %v; want %d", size, err, want)
	}
	if _, err := c.ImageSize(ctx, p, "nope"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("ImageSize(nope): err = %v, want ErrNotFound", err)
	}
	if err := c.RetrieveImage(ctx, p, "nope"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("RetrieveImage(nope): err = %v, want ErrNotFound", err)
	}
	p.RepositoryPath = ""
	if err := c.RetrieveImage(ctx, p, "nope"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("RetrieveImage without repository: err = %v, want ErrNotFound", err)
	}
	if _, err := c.ImageExists(ctx, p, "../x"); !errors.Is(err, hypervisor.ErrInvalid) {
		t.Fatalf("ImageExists(../x): err = %v, want ErrInvalid", err)
	}
}

func TestCancellation(t *testing.T) {
	h := lab(t)
	c := client(t, h)
	// Every call of the worker is slow; the caller gives up early.
	h.AddFault(esxsim.FaultRule{Delay: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	spec := hypervisor.LoadSpec{Slot: slot("pc32", 42), Profile: profile(messages.VMDiskShared), Image: image(baseImage, 12, 3)}
	start := time.Now()
	err := c.Load(ctx, spec, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Load returned %v after its context ended", d)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	for _, limit := range []int{1, 3} {
		t.Run(fmt.Sprint("limit ", limit), func(t *testing.T) {
			h := lab(t)
			c := client(t, h, func(cfg *hypervisor.HostConfig) { cfg.MaxConcurrent = limit })
			ctx := testCtx(t)
			if err := c.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			// Each search of the datastore takes 100ms on the host.
			h.AddFault(esxsim.FaultRule{Methods: []string{"SearchDatastore_Task"}, Delay: 100 * time.Millisecond})
			p := profile(messages.VMDiskShared)
			var wg sync.WaitGroup
			for range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := c.ImageExists(ctx, p, baseImage); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			peak := h.PeakDelayed()
			if peak > limit {
				t.Errorf("%d calls ran at once on the host, limit %d", peak, limit)
			}
			if limit > 1 && peak < 2 {
				t.Errorf("peak %d with limit %d: calls were not concurrent at all", peak, limit)
			}
		})
	}
}

var _ = types.ManagedObjectReference{}

func TestKeepAlive(t *testing.T) {
	h := lab(t)
	c := client(t, h, func(cfg *hypervisor.HostConfig) { cfg.KeepAlive = 100 * time.Millisecond })
	ctx := testCtx(t)
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	before, _ := h.FaultStats()
	time.Sleep(700 * time.Millisecond) // idle: only the keepalive talks to the host
	after, _ := h.FaultStats()
	if after-before < 2 {
		t.Fatalf("%d calls while idle for 700ms with a 100ms keepalive, want >= 2", after-before)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if n := h.Calls("Login"); n != 1 {
		t.Errorf("%d logins, want 1 (the keepalive keeps the session)", n)
	}
}

func TestPool(t *testing.T) {
	l := esxsim.StartTB(t, esxsim.Options{Hosts: 2})
	p, err := hypervisor.NewPool(l.HostConfigs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	if got := p.Names(); len(got) != 2 || got[0] != "esx0" || got[1] != "esx1" {
		t.Fatalf("Names = %v", got)
	}
	for _, name := range p.Names() {
		c, err := p.Host(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ping(testCtx(t)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if again, _ := p.Host(name); again != c {
			t.Errorf("Host(%s) returned a second client: the concurrency limit would not be shared", name)
		}
	}
	if _, err := p.Host("esx9"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("unknown host: err = %v, want ErrNotFound", err)
	}
	if _, err := hypervisor.NewPool(append(l.HostConfigs(), l.Hosts[0].HostConfig())); !errors.Is(err, hypervisor.ErrInvalid) {
		t.Fatalf("duplicate host: err = %v, want ErrInvalid", err)
	}
}

func TestMissingDatastoreIsAnError(t *testing.T) {
	h := lab(t)
	c := client(t, h)
	p := profile(messages.VMDiskShared)
	p.DatastorePath = "/vmfs/volumes/nosuchds/images"
	ok, err := c.ImageExists(testCtx(t), p, baseImage)
	if !errors.Is(err, hypervisor.ErrNotFound) || ok {
		t.Fatalf("ImageExists on a missing datastore = %v, %v; want an ErrNotFound error, not 'absent'", ok, err)
	}
	if !strings.Contains(err.Error(), "nosuchds") {
		t.Errorf("error %q does not name the datastore", err)
	}
}

// Two management nodes (two clients, two processes' locks) retrieve the same image at
// once: both may copy, one move wins, the image is whole and nothing is left behind.
func TestRetrieveImageAcrossProcesses(t *testing.T) {
	l := esxsim.StartTB(t, esxsim.Options{Datastores: []string{"datastore1", "repo"}})
	h := l.Hosts[0]
	const img = "shared-img"
	if _, err := h.SeedImage("repo", "vcl", img, testImageSize); err != nil {
		t.Fatal(err)
	}
	a, b := client(t, h), client(t, h)
	// Slow the copies down so that both clients are copying at the same time.
	h.AddFault(esxsim.FaultRule{Methods: []string{"CopyVirtualDisk_Task"}, Delay: 200 * time.Millisecond})
	ctx := testCtx(t)
	p := profile(messages.VMDiskShared)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, c := range []*hypervisor.ESX{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.RetrieveImage(ctx, p, img)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	if n := h.Calls("CopyVirtualDisk_Task"); n != 2 {
		t.Fatalf("%d copies; this test needs both clients to copy (no shared lock between processes)", n)
	}
	files := browse(t, h, "datastore1", "images/"+img)
	if files[img+"-flat.vmdk"] != testImageSize || len(files) != 2 {
		t.Fatalf("image folder = %v", files)
	}
	for n := range browse(t, h, "datastore1", "images") {
		if strings.Contains(n, "vclq-tmp") {
			t.Errorf("temporary folder left behind: %s", n)
		}
	}
}
