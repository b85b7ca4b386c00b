package hypervisor_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/messages"
)

// verifyLoaded checks, through the property collector and the datastore browser, that
// the slot holds exactly the VM the spec asks for.
func verifyLoaded(t *testing.T, h *esxsim.Host, spec hypervisor.LoadSpec) {
	t.Helper()
	name := hypervisor.VMName(spec.Slot, spec.Image)
	if want := fmt.Sprintf("%s_%d-v%d", spec.Slot.ShortName, spec.Image.ID, spec.Image.Revision); name != want {
		t.Fatalf("VMName = %q, want %q", name, want)
	}
	vms := slotVMs(t, h, spec.Slot.ShortName)
	if len(vms) != 1 {
		var names []string
		for _, v := range vms {
			names = append(names, v.Name)
		}
		t.Fatalf("slot %s has %d VMs %v, want exactly 1", spec.Slot.ShortName, len(vms), names)
	}
	vm := vms[0]
	if vm.Name != name {
		t.Errorf("VM name = %q, want %q", vm.Name, name)
	}
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("power = %s, want poweredOn", vm.Runtime.PowerState)
	}
	if want := fmt.Sprintf("[datastore1] vms/%s/%s.vmx", name, name); vm.Config.Files.VmPathName != want {
		t.Errorf("vmx = %q, want %q", vm.Config.Files.VmPathName, want)
	}
	wantCPU := int32(max(spec.Image.MinCPUs, spec.Slot.CPUs))
	wantMB := int32(max(spec.Image.MinRAMMB, spec.Slot.RAMMB))
	if vm.Config.Hardware.NumCPU != wantCPU || vm.Config.Hardware.MemoryMB != wantMB {
		t.Errorf("hardware = %d CPUs %d MB, want %d CPUs %d MB", vm.Config.Hardware.NumCPU, vm.Config.Hardware.MemoryMB, wantCPU, wantMB)
	}
	ec := extra(vm)
	for k, want := range map[string]string{
		hypervisor.KeyImageID:         fmt.Sprint(spec.Image.ID),
		hypervisor.KeyImageRevisionID: fmt.Sprint(spec.Image.RevisionID),
		hypervisor.KeyImageName:       spec.Image.Name,
		hypervisor.KeyComputerID:      fmt.Sprint(spec.Slot.ComputerID),
	} {
		if ec[k] != want {
			t.Errorf("extraConfig %s = %q, want %q", k, ec[k], want)
		}
	}

	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	nics := devices.SelectByType((*types.VirtualEthernetCard)(nil))
	wantNICs := []struct{ mac, net string }{{spec.Slot.Eth0MAC, spec.Profile.Switch0}, {spec.Slot.Eth1MAC, spec.Profile.Switch1}}
	if len(nics) != len(wantNICs) {
		t.Fatalf("%d NICs, want %d", len(nics), len(wantNICs))
	}
	for i, n := range nics {
		card := n.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		b, _ := card.Backing.(*types.VirtualEthernetCardNetworkBackingInfo)
		if !strings.EqualFold(card.MacAddress, wantNICs[i].mac) || card.AddressType != string(types.VirtualEthernetCardMacTypeManual) {
			t.Errorf("NIC %d MAC = %s (%s), want %s manual", i, card.MacAddress, card.AddressType, wantNICs[i].mac)
		}
		if b == nil || b.DeviceName != wantNICs[i].net {
			t.Errorf("NIC %d network = %+v, want %s", i, b, wantNICs[i].net)
		}
	}

	disks := devices.SelectByType((*types.VirtualDisk)(nil))
	if len(disks) != 1 {
		t.Fatalf("%d disks, want 1", len(disks))
	}
	backing := disks[0].(*types.VirtualDisk).Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if want := fmt.Sprintf("[datastore1] vms/%s/%s.vmdk", name, name); backing.FileName != want {
		t.Errorf("disk = %q, want %q", backing.FileName, want)
	}
	files := browse(t, h, "datastore1", "vms/"+name)
	basePath := fmt.Sprintf("[datastore1] images/%s/%s.vmdk", spec.Image.Name, spec.Image.Name)
	switch spec.Profile.VMDisk {
	case messages.VMDiskShared:
		if backing.Parent == nil || backing.Parent.FileName != basePath {
			t.Errorf("disk parent = %+v, want the shared base %s (a linked clone)", backing.Parent, basePath)
		}
		if files[name+"-flat.vmdk"] != 0 {
			t.Errorf("linked clone's delta holds %d bytes, want 0 (the base holds the data)", files[name+"-flat.vmdk"])
		}
	case messages.VMDiskDedicated:
		if backing.Parent != nil {
			t.Errorf("dedicated disk has parent %s, want an independent copy", backing.Parent.FileName)
		}
		base := browse(t, h, "datastore1", "images/"+spec.Image.Name)
		if got, want := files[name+"-flat.vmdk"], base[spec.Image.Name+"-flat.vmdk"]; got != want || got == 0 {
			t.Errorf("dedicated copy is %d bytes, base %d", got, want)
		}
	}
	if _, ok := files[name+".vmdk"]; !ok {
		t.Errorf("VM folder lacks its disk descriptor: %v", keys(files))
	}

	// Nothing else of the slot on the datastore: no orphans, no temporary folders.
	for n := range browse(t, h, "datastore1", "vms") {
		if strings.HasPrefix(n, spec.Slot.ShortName+"_") && n != name {
			t.Errorf("leftover folder of the slot: vms/%s", n)
		}
	}
}

func TestLoad(t *testing.T) {
	type setup func(t *testing.T, h *esxsim.Host)
	slots := []struct {
		name  string
		setup setup
		gone  []string // folders that must be gone afterwards
	}{
		{name: "empty slot", setup: func(*testing.T, *esxsim.Host) {}},
		{
			name: "slot holding another image's VM",
			setup: func(t *testing.T, h *esxsim.Host) {
				rawVM(t, h, "datastore1", "vms/pc1_99-v1", "pc1_99-v1", true)
			},
			gone: []string{"pc1_99-v1"},
		},
		{
			name: "slot with an orphan folder",
			setup: func(t *testing.T, h *esxsim.Host) {
				d := filepath.Join(h.DatastoreDir("datastore1"), "vms", "pc1_7-v2")
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(d, "pc1_7-v2.vmx"), []byte("orphan"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			gone: []string{"pc1_7-v2"},
		},
	}
	for _, disk := range []string{messages.VMDiskShared, messages.VMDiskDedicated} {
		for _, s := range slots {
			t.Run(disk+"/"+s.name, func(t *testing.T) {
				h := lab(t)
				// An unrelated VM on the same host must survive the load.
				rawVM(t, h, "datastore1", "vms/pc10_5-v1", "pc10_5-v1", true)
				s.setup(t, h)
				c := client(t, h)
				spec := hypervisor.LoadSpec{Reservation: 42, Slot: slot("pc1", 7), Profile: profile(disk), Image: image(baseImage, 12, 3)}
				rec := &recorder{}
				if err := c.Load(testCtx(t), spec, rec); err != nil {
					t.Fatal(err)
				}
				verifyLoaded(t, h, spec)
				want := []string{messages.LoadDoesImageExist, messages.LoadStartLoad, messages.LoadTransferVM, messages.LoadVMSetupConfig, messages.LoadStartVM}
				if got := rec.names(); !reflect.DeepEqual(got, want) {
					t.Errorf("progress = %v, want %v", got, want)
				}
				vms := browse(t, h, "datastore1", "vms")
				for _, g := range s.gone {
					if _, ok := vms[g]; ok {
						t.Errorf("folder vms/%s survived the load", g)
					}
				}
				if _, ok := vms["pc10_5-v1"]; !ok || len(slotVMs(t, h, "pc10")) != 1 {
					t.Errorf("the load touched another slot's VM (pc10)")
				}
			})
		}
	}
}

// TestLoadVCLProfilePathForms (issue 11 item 4): the vmprofile path forms VCL
// accepts load on a simulated host: a bare datastore name (vcl.sql's own profiles:
// datastorepath = vmpath = 'datastore1', the datastore's root), "[datastore] path",
// /vmfs/volumes/<datastore>/path and /vmfs/volumes/<datastore uuid>/path (resolved
// against the host's datastores); a datastore the host lacks, by name or by UUID, is
// refused naming it, and a UUID path with traversal or shell metacharacters is
// refused before any host call.
func TestLoadVCLProfilePathForms(t *testing.T) {
	uuid := func(h *esxsim.Host, ds string) string { return h.DatastoreUUIDs[ds] }
	cases := []struct {
		name   string
		vmPath func(h *esxsim.Host) string
		vmDir  string
	}{
		{"bare datastore name", func(*esxsim.Host) string { return "datastore1" }, ""},
		{"[datastore] path", func(*esxsim.Host) string { return "[datastore1] vms" }, "vms"},
		{"/vmfs/volumes path", func(*esxsim.Host) string { return "/vmfs/volumes/datastore1/vclvms" }, "vclvms"},
		{"/vmfs/volumes/<uuid> path", func(h *esxsim.Host) string { return "/vmfs/volumes/" + uuid(h, "datastore1") + "/vclvms" }, "vclvms"},
		{"/vmfs/volumes/<uuid> root", func(h *esxsim.Host) string { return "/vmfs/volumes/" + uuid(h, "datastore1") }, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := lab(t)
			c := client(t, h)
			p := profile(messages.VMDiskShared)
			p.VMPath = tc.vmPath(h)
			if uuid(h, "datastore1") == "" {
				t.Fatal("esxsim gave datastore1 no UUID")
			}
			t.Logf("vm path %q", p.VMPath)
			spec := hypervisor.LoadSpec{Reservation: 3, Slot: slot("pc3", 9), Profile: p, Image: image(baseImage, 12, 3)}
			if err := c.Load(testCtx(t), spec, nil); err != nil {
				t.Fatalf("load with vm path %q: %v", p.VMPath, err)
			}
			folders := browse(t, h, "datastore1", tc.vmDir)
			t.Logf("vm path %q: %d folders in [datastore1] %s", p.VMPath, len(folders), tc.vmDir)
			if _, ok := folders[hypervisor.VMName(spec.Slot, spec.Image)]; !ok {
				t.Errorf("no VM folder %s in [datastore1] %s: %v", hypervisor.VMName(spec.Slot, spec.Image), tc.vmDir, folders)
			}
		})
	}
	for _, tc := range []struct{ name, vmPath, want string }{
		{"datastore the host lacks", "nosuchds", "nosuchds"},
		{"datastore UUID the host lacks", "/vmfs/volumes/5f1b2c3d-4e5f6a7b-8c9d-0a1b2c3d4e5f/vms", `no datastore named or with UUID "5f1b2c3d-4e5f6a7b-8c9d-0a1b2c3d4e5f"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := lab(t)
			c := client(t, h)
			p := profile(messages.VMDiskShared)
			p.VMPath = tc.vmPath
			err := c.Load(testCtx(t), hypervisor.LoadSpec{Reservation: 4, Slot: slot("pc4", 10), Profile: p, Image: image(baseImage, 12, 3)}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, hypervisor.ErrNotFound) {
				t.Fatalf("load onto a missing datastore: %v, want ErrNotFound naming %s", err, tc.want)
			}
			if len(slotVMs(t, h, "pc4")) != 0 {
				t.Errorf("a VM was made for a profile whose datastore the host lacks")
			}
		})
	}
	t.Run("unsafe uuid paths", func(t *testing.T) {
		h := lab(t)
		c := client(t, h)
		u := h.DatastoreUUIDs["datastore1"]
		for _, bad := range []string{"/vmfs/volumes/" + u + "/../etc", "/vmfs/volumes/" + u + "/vms;reboot", "/vmfs/volumes/" + u + "/$(id)", "/vmfs/volumes/" + u + "/./vms"} {
			p := profile(messages.VMDiskShared)
			p.VMPath = bad
			before, _ := h.FaultStats()
			err := c.Load(testCtx(t), hypervisor.LoadSpec{Reservation: 5, Slot: slot("pc5", 11), Profile: p, Image: image(baseImage, 12, 3)}, nil)
			if err == nil {
				t.Errorf("vm path %q accepted", bad)
			}
			if after, _ := h.FaultStats(); after != before {
				t.Errorf("vm path %q: %d host calls before it was refused", bad, after-before)
			}
		}
	})
}

func TestLoadTwiceIsIdempotent(t *testing.T) {
	for _, disk := range []string{messages.VMDiskShared, messages.VMDiskDedicated} {
		t.Run(disk, func(t *testing.T) {
			h := lab(t)
			c := client(t, h)
			spec := hypervisor.LoadSpec{Reservation: 1, Slot: slot("pc2", 8), Profile: profile(disk), Image: image(baseImage, 12, 3)}
			for i := range 2 {
				if err := c.Load(testCtx(t), spec, nil); err != nil {
					t.Fatalf("load %d: %v", i+1, err)
				}
				verifyLoaded(t, h, spec)
			}
			// The phases, repeated one by one, are idempotent too.
			ctx := testCtx(t)
			if err := c.TransferDisk(ctx, spec); err != nil {
				t.Fatal(err)
			}
			if err := c.SetupVM(ctx, spec); err != nil {
				t.Fatal(err)
			}
			if err := c.StartVM(ctx, spec); err != nil {
				t.Fatal(err)
			}
			verifyLoaded(t, h, spec)
		})
	}
}

func TestLoadPhasesOneByOne(t *testing.T) {
	h := lab(t)
	c := client(t, h)
	ctx := testCtx(t)
	spec := hypervisor.LoadSpec{Slot: slot("pc3", 9), Profile: profile(messages.VMDiskShared), Image: image(baseImage, 12, 3)}
	rawVM(t, h, "datastore1", "vms/pc3_1-v1", "pc3_1-v1", true)
	if err := c.RemoveSlotVMs(ctx, spec.Slot, spec.Profile); err != nil {
		t.Fatal(err)
	}
	if n := len(slotVMs(t, h, "pc3")); n != 0 {
		t.Fatalf("after RemoveSlotVMs %d VMs remain", n)
	}
	if err := c.TransferDisk(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := c.SetupVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if ps := powerState(t, h, hypervisor.VMName(spec.Slot, spec.Image)); ps != types.VirtualMachinePowerStatePoweredOff {
		t.Fatalf("after SetupVM the VM is %s, want poweredOff", ps)
	}
	if err := c.StartVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	verifyLoaded(t, h, spec)
}

func TestConcurrentLoadsRetrieveImageOnce(t *testing.T) {
	l := esxsim.StartTB(t, esxsim.Options{Datastores: []string{"datastore1", "repo"}})
	h := l.Hosts[0]
	const img = "win10-base" // only in the repository
	if _, err := h.SeedImage("repo", "vcl", img, testImageSize); err != nil {
		t.Fatal(err)
	}
	c := client(t, h)
	ctx := testCtx(t)
	specs := []hypervisor.LoadSpec{
		{Slot: slot("pc4", 10), Profile: profile(messages.VMDiskShared), Image: image(img, 20, 1)},
		{Slot: slot("pc5", 11), Profile: profile(messages.VMDiskShared), Image: image(img, 20, 1)},
		{Slot: slot("pc6", 12), Profile: profile(messages.VMDiskShared), Image: image(img, 20, 1)},
	}
	// The loads run at once through image check, retrieval, slot removal and disk
	// transfer. VM creation and power-on are serialised by the progress hook because
	// vcsim itself races (unsynchronised reads of the Datastore object) when VMs on one
	// datastore are created or reconfigured concurrently, which -race reports.
	var setup sync.Mutex
	recs := make([]*recorder, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, spec := range specs {
		recs[i] = &recorder{onStep: func(name string) {
			if name == messages.LoadVMSetupConfig {
				setup.Lock()
			}
		}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Load(ctx, spec, recs[i])
			if slices.Contains(recs[i].names(), messages.LoadVMSetupConfig) {
				setup.Unlock()
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("load %d: %v", i, err)
		}
	}
	for _, spec := range specs {
		verifyLoaded(t, h, spec)
	}
	if n := h.Calls("CopyVirtualDisk_Task"); n != 1 {
		t.Errorf("CopyVirtualDisk_Task called %d times, want 1 (one retrieval for three loads)", n)
	}
	files := browse(t, h, "datastore1", "images/"+img)
	if files[img+"-flat.vmdk"] != testImageSize || len(files) != 2 {
		t.Errorf("retrieved image folder = %v", files)
	}
	for n := range browse(t, h, "datastore1", "images") {
		if strings.Contains(n, "vclq-tmp") {
			t.Errorf("temporary folder left behind: %s", n)
		}
	}
	retrieved := 0
	for _, r := range recs {
		for _, s := range r.names() {
			if s == messages.LoadCopyFromPartnerMN {
				retrieved++
			}
		}
	}
	if retrieved == 0 {
		t.Errorf("no load reported %s", messages.LoadCopyFromPartnerMN)
	}
}

func TestLoadWithTransientFaults(t *testing.T) {
	h := lab(t)
	c := client(t, h, func(cfg *hypervisor.HostConfig) { cfg.MaxAttempts = 12 })
	h.AddFault(esxsim.TransientFaults(0.2))
	ctx := testCtx(t)
	specs := []hypervisor.LoadSpec{
		{Slot: slot("pc7", 13), Profile: profile(messages.VMDiskShared), Image: image(baseImage, 12, 3)},
		{Slot: slot("pc8", 14), Profile: profile(messages.VMDiskDedicated), Image: image(baseImage, 12, 3)},
	}
	rawVM(t, h, "datastore1", "vms/pc7_1-v1", "pc7_1-v1", true)
	for _, spec := range specs {
		if err := c.Load(ctx, spec, nil); err != nil {
			t.Fatalf("load %s under 20%% transient faults: %v", spec.Slot.ShortName, err)
		}
	}
	calls, faulted := h.FaultStats()
	h.ClearFaults()
	if faulted == 0 {
		t.Fatalf("no fault was injected in %d calls", calls)
	}
	t.Logf("%d of %d SOAP calls failed transiently", faulted, calls)
	for _, spec := range specs {
		verifyLoaded(t, h, spec)
	}
}

func TestLoadPermanentFault(t *testing.T) {
	cases := []struct {
		name    string
		method  string
		fault   func() types.BaseMethodFault
		wantErr error
		wantOp  string
	}{
		{"no permission to create", "CreateVM_Task", func() types.BaseMethodFault {
			return &types.NoPermission{PrivilegeId: "VirtualMachine.Inventory.Create"}
		}, hypervisor.ErrPermission, "CreateVM"},
		{"child disk refused (base gone)", "CreateVM_Task", func() types.BaseMethodFault {
			return &types.FileNotFound{FileFault: types.FileFault{File: "[datastore1] golden/base/base.vmdk"}}
		}, hypervisor.ErrNotFound, "CreateVM"},
		{"power on: insufficient resources", "PowerOnVM_Task", func() types.BaseMethodFault { return &types.InsufficientMemoryResourcesFault{} }, hypervisor.ErrInsufficientResources, "PowerOnVM"},
		{"network missing", "RetrievePropertiesEx", nil, hypervisor.ErrNotFound, "network"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := lab(t)
			c := client(t, h)
			spec := hypervisor.LoadSpec{Reservation: 77, Slot: slot("pc9", 15), Profile: profile(messages.VMDiskShared), Image: image(baseImage, 12, 3)}
			if tc.fault != nil {
				h.AddFault(esxsim.Permanent(tc.method, tc.fault))
			} else {
				spec.Profile.Switch1 = "no-such-switch"
			}
			err := c.Load(testCtx(t), spec, nil)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			for _, want := range []string{"host " + h.Name, "slot pc9", tc.wantOp, "reservation 77"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
			var oe *hypervisor.OpError
			if !errors.As(err, &oe) || oe.Attempts > 1 {
				t.Errorf("permanent fault retried: %+v", oe)
			}
			h.ClearFaults()
			if vms := slotVMs(t, h, "pc9"); len(vms) != 0 {
				t.Errorf("a failed load left %d VMs registered (%s)", len(vms), vms[0].Name)
			}
			for n := range browse(t, h, "datastore1", "vms") {
				if strings.HasPrefix(n, "pc9_") {
					t.Errorf("a failed load left folder vms/%s", n)
				}
			}
		})
	}
}

func TestLoadRefusesWithoutSpace(t *testing.T) {
	h := lab(t)
	c := client(t, h)
	if err := h.SetFreeSpace("datastore1", 100<<20); err != nil {
		t.Fatal(err)
	}
	spec := hypervisor.LoadSpec{Slot: slot("pc11", 16), Profile: profile(messages.VMDiskShared), Image: image(baseImage, 12, 3)}
	err := c.Load(testCtx(t), spec, nil)
	if !errors.Is(err, hypervisor.ErrInsufficientResources) || !strings.Contains(err.Error(), "datastore1") {
		t.Fatalf("err = %v, want ErrInsufficientResources naming datastore1", err)
	}
	if vms := slotVMs(t, h, "pc11"); len(vms) != 0 {
		t.Errorf("VM created despite lack of space")
	}
}

func TestLoadValidatesInput(t *testing.T) {
	h := lab(t)
	c := client(t, h)
	good := hypervisor.LoadSpec{Slot: slot("pc12", 17), Profile: profile(messages.VMDiskShared), Image: image(baseImage, 12, 3)}
	cases := []struct {
		name string
		mod  func(*hypervisor.LoadSpec)
	}{
		{"image name with a slash", func(s *hypervisor.LoadSpec) { s.Image.Name = "../etc" }},
		{"short name with a dot", func(s *hypervisor.LoadSpec) { s.Slot.ShortName = "pc1.example" }},
		{"bad MAC", func(s *hypervisor.LoadSpec) { s.Slot.Eth0MAC = "00:50:56:zz:00:01" }},
		{"datastore path outside /vmfs/volumes", func(s *hypervisor.LoadSpec) { s.Profile.DatastorePath = "/etc/vmware" }},
		{"dot-dot in vm path", func(s *hypervisor.LoadSpec) { s.Profile.VMPath = "[datastore1] vms/../images" }},
		{"unknown vmdisk", func(s *hypervisor.LoadSpec) { s.Profile.VMDisk = "thick" }},
		{"datastore name with a shell metacharacter", func(s *hypervisor.LoadSpec) { s.Profile.VMPath = "datastore1;reboot" }},
		{"datastore name with a command substitution", func(s *hypervisor.LoadSpec) { s.Profile.DatastorePath = "$(reboot)" }},
		{"bare dot-dot", func(s *hypervisor.LoadSpec) { s.Profile.VMPath = ".." }},
		{"no RAM anywhere", func(s *hypervisor.LoadSpec) { s.Slot.RAMMB, s.Image.MinRAMMB = 0, 0 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := good
			tc.mod(&spec)
			before := 0
			if calls, _ := h.FaultStats(); calls > 0 {
				before = calls
			}
			err := c.Load(testCtx(t), spec, nil)
			if !errors.Is(err, hypervisor.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if calls, _ := h.FaultStats(); calls != before {
				t.Errorf("invalid input reached the host (%d calls)", calls-before)
			}
		})
	}
}

var _ = mo.VirtualMachine{}

// Faults reported by the task rather than the call, as ESX reports most of them.
func TestLoadTaskFaults(t *testing.T) {
	cases := []struct {
		name      string
		disk      string
		rule      esxsim.FaultRule
		wantErr   error // nil: the load succeeds
		wantCalls map[string]int
	}{
		{
			name:      "power-on task in progress twice, then succeeds",
			disk:      messages.VMDiskShared,
			rule:      esxsim.FaultRule{Methods: []string{"PowerOnVM_Task"}, Max: 2, InTask: true, Fault: func() types.BaseMethodFault { return &types.TaskInProgress{} }},
			wantCalls: map[string]int{"PowerOnVM_Task": 3},
		},
		{
			name:      "power-on task: insufficient memory",
			disk:      messages.VMDiskShared,
			rule:      esxsim.FaultRule{Methods: []string{"PowerOnVM_Task"}, InTask: true, Fault: func() types.BaseMethodFault { return &types.InsufficientMemoryResourcesFault{} }},
			wantErr:   hypervisor.ErrInsufficientResources,
			wantCalls: map[string]int{"PowerOnVM_Task": 1},
		},
		{
			name:      "full copy task: no disk space",
			disk:      messages.VMDiskDedicated,
			rule:      esxsim.FaultRule{Methods: []string{"CopyVirtualDisk_Task"}, InTask: true, Fault: func() types.BaseMethodFault { return &types.NoDiskSpace{Datastore: "datastore1"} }},
			wantErr:   hypervisor.ErrInsufficientResources,
			wantCalls: map[string]int{"CopyVirtualDisk_Task": 1, "CreateVM_Task": 0},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := lab(t)
			c := client(t, h)
			spec := hypervisor.LoadSpec{Slot: slot("pc40", 50), Profile: profile(tc.disk), Image: image(baseImage, 12, 3)}
			h.AddFault(tc.rule)
			err := c.Load(testCtx(t), spec, nil)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			for m, n := range tc.wantCalls {
				if got := h.Calls(m); got != n {
					t.Errorf("%s called %d times, want %d", m, got, n)
				}
			}
			h.ClearFaults()
			if tc.wantErr == nil {
				verifyLoaded(t, h, spec)
				return
			}
			if vms := slotVMs(t, h, "pc40"); len(vms) != 0 {
				t.Errorf("failed load left %d VMs", len(vms))
			}
			for n := range browse(t, h, "datastore1", "vms") {
				if strings.HasPrefix(n, "pc40_") {
					t.Errorf("failed load left folder vms/%s", n)
				}
			}
		})
	}
}
