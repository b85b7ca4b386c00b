package hypervisor_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/messages"
)

const (
	testImageSize = 3 << 20 // small on purpose: tests copy it several times
	baseImage     = "centos7-base"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// lab starts one host with an image datastore and a repository datastore, the base
// image seeded under datastore1/images and in the repository.
func lab(t *testing.T) *esxsim.Host {
	t.Helper()
	l := esxsim.StartTB(t, esxsim.Options{Datastores: []string{"datastore1", "repo"}})
	h := l.Hosts[0]
	if _, err := h.SeedImage("datastore1", "images", baseImage, testImageSize); err != nil {
		t.Fatal(err)
	}
	if _, err := h.SeedImage("repo", "vcl", baseImage, testImageSize); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(h.DatastoreDir("datastore1"), "vms"), 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

// client is the code under test, pinned to the host's thumbprint, with fast retries.
func client(t *testing.T, h *esxsim.Host, mod ...func(*hypervisor.HostConfig)) *hypervisor.ESX {
	t.Helper()
	cfg := hypervisor.HostConfig{
		Name:        h.Name,
		URL:         h.URL.String(),
		Username:    h.Username,
		Password:    h.Password,
		Thumbprint:  h.Thumbprint,
		CallTimeout: 20 * time.Second,
		TaskTimeout: time.Minute,
		MaxAttempts: 10,
		Backoff:     2 * time.Millisecond,
		BackoffMax:  20 * time.Millisecond,
	}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := hypervisor.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c
}

func profile(disk string) hypervisor.Profile {
	return hypervisor.Profile{
		DatastorePath:  "/vmfs/volumes/datastore1/images",
		VMPath:         "[datastore1] vms",
		RepositoryPath: "/vmfs/volumes/repo/vcl",
		Switch0:        "virtualswitch0",
		Switch1:        "virtualswitch1",
		VMDisk:         disk,
	}
}

func slot(short string, id int64) hypervisor.Slot {
	n := byte(id)
	return hypervisor.Slot{
		ComputerID: id, ShortName: short, RAMMB: 1024, CPUs: 1,
		Eth0MAC: "00:50:56:00:01:" + hex2(n), Eth1MAC: "00:50:56:00:02:" + hex2(n),
	}
}

func hex2(b byte) string {
	const d = "0123456789abcdef"
	return string([]byte{d[b>>4], d[b&15]})
}

func image(name string, id int64, rev int) hypervisor.Image {
	return hypervisor.Image{ID: id, Name: name, RevisionID: id*100 + int64(rev), Revision: rev, MinRAMMB: 2048, MinCPUs: 2, OSType: messages.OSLinux}
}

// recorder is a Progress that records step names.
type recorder struct {
	mu     sync.Mutex
	steps  []string
	onStep func(name string) // optional, called outside the lock
}

func (r *recorder) Step(name, _ string) {
	r.mu.Lock()
	r.steps = append(r.steps, name)
	r.mu.Unlock()
	if r.onStep != nil {
		r.onStep(name)
	}
}

func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.steps...)
}

// --- verification through govmomi, as govc would, with the observer login ---

func observer(t *testing.T, h *esxsim.Host) *vim25.Client {
	t.Helper()
	c, err := h.Observer(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// allVMs lists every registered VM with the property collector.
func allVMs(t *testing.T, h *esxsim.Host) []mo.VirtualMachine {
	t.Helper()
	ctx := testCtx(t)
	c := observer(t, h)
	v, err := view.NewManager(c).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = v.Destroy(ctx) }()
	var vms []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name", "config", "runtime.powerState"}, &vms); err != nil {
		t.Fatal(err)
	}
	return vms
}

// slotVMs are the registered VMs whose name matches VCL's slot pattern.
func slotVMs(t *testing.T, h *esxsim.Host, short string) []mo.VirtualMachine {
	t.Helper()
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(short) + `_\d+-v\d+`)
	var out []mo.VirtualMachine
	for _, vm := range allVMs(t, h) {
		if re.MatchString(vm.Name) {
			out = append(out, vm)
		}
	}
	return out
}

// browse lists a datastore folder with the datastore browser (name -> size);
// nil if the folder does not exist.
func browse(t *testing.T, h *esxsim.Host, ds, dir string) map[string]int64 {
	t.Helper()
	ctx := testCtx(t)
	c := observer(t, h)
	f := find.NewFinder(c, true)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.SetDatacenter(dc)
	d, err := f.Datastore(ctx, ds)
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.Browser(ctx)
	if err != nil {
		t.Fatal(err)
	}
	task, err := b.SearchDatastore(ctx, "["+ds+"] "+dir, &types.HostDatastoreBrowserSearchSpec{
		MatchPattern: []string{"*"},
		Details:      &types.FileQueryFlags{FileSize: true, FileType: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		if strings.Contains(err.Error(), "not found") || strings.Contains(err.Error(), "FileNotFound") {
			return nil
		}
		// vcsim's FileNotFound has an empty message: check the directory itself.
		if _, serr := os.Stat(filepath.Join(h.DatastoreDir(ds), dir)); os.IsNotExist(serr) {
			return nil
		}
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, fi := range info.Result.(types.HostDatastoreBrowserSearchResults).File {
		out[fi.GetFileInfo().Path] = fi.GetFileInfo().FileSize
	}
	return out
}

func keys(m map[string]int64) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

func extra(vm mo.VirtualMachine) map[string]string {
	m := map[string]string{}
	if vm.Config == nil {
		return m
	}
	for _, o := range vm.Config.ExtraConfig {
		ov := o.GetOptionValue()
		if s, ok := ov.Value.(string); ok {
			m[ov.Key] = s
		}
	}
	return m
}

// rawVM creates a VM with plain govmomi (not the code under test), e.g. another
// image's VM occupying a slot.
func rawVM(t *testing.T, h *esxsim.Host, ds, dir, name string, on bool) {
	t.Helper()
	ctx := testCtx(t)
	c := observer(t, h)
	f := find.NewFinder(c, true)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := f.DefaultResourcePool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec := types.VirtualMachineConfigSpec{Name: name, GuestId: "otherGuest64", NumCPUs: 1, MemoryMB: 128,
		Files: &types.VirtualMachineFileInfo{VmPathName: "[" + ds + "] " + dir + "/" + name + ".vmx"}}
	task, err := folders.VmFolder.CreateVM(ctx, spec, pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := task.WaitForResult(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if on {
		vm := object.NewVirtualMachine(c, res.Result.(types.ManagedObjectReference))
		task, err := vm.PowerOn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// setPower changes a VM's power state with plain govmomi (a guest shutting down).
func setPower(ctx context.Context, h *esxsim.Host, name string, on bool) error {
	c, err := h.Observer(ctx)
	if err != nil {
		return err
	}
	f := find.NewFinder(c, true)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		return err
	}
	f.SetDatacenter(dc)
	vm, err := f.VirtualMachine(ctx, name)
	if err != nil {
		return err
	}
	var task *object.Task
	if on {
		task, err = vm.PowerOn(ctx)
	} else {
		task, err = vm.PowerOff(ctx)
	}
	if err != nil {
		return err
	}
	return task.Wait(ctx)
}

// powerState reads one VM's power state with the property collector.
func powerState(t *testing.T, h *esxsim.Host, name string) types.VirtualMachinePowerState {
	t.Helper()
	for _, vm := range allVMs(t, h) {
		if vm.Name == name {
			return vm.Runtime.PowerState
		}
	}
	t.Fatalf("no VM %s", name)
	return ""
}

var _ = property.DefaultCollector
