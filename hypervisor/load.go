package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/messages"
)

// Load loads the slot with the image the way VCL's VMware module does, reporting each
// loadlog step to progress (may be nil) as it begins:
//
//	doesimageexists    is the base image on the datastore?
//	copyfrompartnerMN  only if not: RetrieveImage from the repository
//	startload          RemoveSlotVMs
//	transfervm         TransferDisk
//	vmsetupconfig      SetupVM
//	startvm            StartVM
//
// If a step after startload fails, Load removes the slot's VMs again (with a fresh,
// bounded context) so no half-made VM stays registered, and returns the step's error.
// Load is idempotent: loading the same spec twice ends in the same single VM.
func (c *ESX) Load(ctx context.Context, spec LoadSpec, progress Progress) error {
	if progress == nil {
		progress = nopProgress{}
	}
	if err := spec.Validate(); err != nil {
		return err
	}
	if err := c.resolveSpec(ctx, &spec); err != nil {
		return err
	}
	pp, _ := spec.Profile.paths()
	im := spec.Image
	log := c.log.With().Int64("reservation", spec.Reservation).Int64("computer", spec.Slot.ComputerID).Str("slot", spec.Slot.ShortName).Logger()
	wrap := func(step string, err error) error {
		return fmt.Errorf("reservation %d: load %s: step %s: %w", spec.Reservation, VMName(spec.Slot, im), step, err)
	}

	base := pp.basePath(im.Name)
	short := spec.Slot.ShortName
	progress.Step(messages.LoadDoesImageExist, base.String())
	size, err := c.imageBytes(ctx, short, base)
	if errors.Is(err, ErrNotFound) {
		src, _ := pp.repoPath(im.Name)
		progress.Step(messages.LoadCopyFromPartnerMN, "retrieving "+im.Name+" from repository "+src.String())
		if err := c.CheckSpace(ctx, spec); err != nil {
			return wrap(messages.LoadCopyFromPartnerMN, err)
		}
		if err := c.RetrieveImage(ctx, spec.Profile, im.Name); err != nil {
			return wrap(messages.LoadCopyFromPartnerMN, err)
		}
		size, err = c.imageBytes(ctx, short, base)
	}
	if err != nil {
		return wrap(messages.LoadDoesImageExist, err)
	}

	progress.Step(messages.LoadStartLoad, "removing the VMs of slot "+spec.Slot.ShortName)
	if err := c.RemoveSlotVMs(ctx, spec.Slot, spec.Profile); err != nil {
		return wrap(messages.LoadStartLoad, err)
	}
	rollback := func(step string, err error) error {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*c.cfg.CallTimeout)
		defer cancel()
		if rerr := c.RemoveSlotVMs(rctx, spec.Slot, spec.Profile); rerr != nil {
			log.Error().Err(rerr).Str("step", step).Msg("rollback after failed load step failed")
			return errors.Join(wrap(step, err), fmt.Errorf("rollback: %w", rerr))
		}
		return wrap(step, err)
	}

	how := "linked clone of " + base.String()
	if spec.Profile.VMDisk == messages.VMDiskDedicated {
		how = "full copy of " + base.String()
	}
	// The slot is empty now and the image was checked: the phases skip their own
	// checks (the one-by-one methods make them).
	progress.Step(messages.LoadTransferVM, how)
	if err := c.transferDisk(ctx, spec, &size); err != nil {
		return rollback(messages.LoadTransferVM, err)
	}
	progress.Step(messages.LoadVMSetupConfig, fmt.Sprintf("creating %s: %d CPUs, %d MB", VMName(spec.Slot, im), cpus(spec), ramMB(spec)))
	ref, err := c.setupVM(ctx, spec, true)
	if err != nil {
		return rollback(messages.LoadVMSetupConfig, err)
	}
	progress.Step(messages.LoadStartVM, "powering on "+VMName(spec.Slot, im))
	if err := c.powerOn(ctx, short, vmInfo{ref: ref, name: VMName(spec.Slot, im), power: PoweredOff}); err != nil {
		return rollback(messages.LoadStartVM, err)
	}
	log.Info().Str("vm", VMName(spec.Slot, im)).Str("vmdisk", spec.Profile.VMDisk).Msg("loaded")
	return nil
}

type nopProgress struct{}

func (nopProgress) Step(string, string) {}

// ramMB is the VM's memory: the larger of the image minimum and the computer's RAM,
// rounded up to a multiple of 4 MB (ESX's granularity).
func ramMB(spec LoadSpec) int {
	r := max(spec.Image.MinRAMMB, spec.Slot.RAMMB)
	return (r + 3) / 4 * 4
}

// cpus is the VM's CPU count: the larger of the image minimum and the computer's
// CPUs, at least 1.
func cpus(spec LoadSpec) int { return max(spec.Image.MinCPUs, spec.Slot.CPUs, 1) }

// CheckSpace checks the datastores have room for the load, as VCL does: the VM's RAM
// (swap file) plus a quarter of the image (delta disk) plus the image if it is not on
// the datastore yet; a dedicated disk needs the whole image in the VM folder instead of
// the quarter. Not enough is ErrInsufficientResources.
func (c *ESX) CheckSpace(ctx context.Context, spec LoadSpec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if err := c.resolveSpec(ctx, &spec); err != nil {
		return err
	}
	pp, _ := spec.Profile.paths()
	short := spec.Slot.ShortName
	size, err := c.imageBytes(ctx, short, pp.basePath(spec.Image.Name))
	present := err == nil
	if errors.Is(err, ErrNotFound) {
		if repo, ok := pp.repoPath(spec.Image.Name); ok {
			size, err = c.imageBytes(ctx, short, repo)
		}
		if errors.Is(err, ErrNotFound) {
			size, err = 0, nil
		}
	}
	if err != nil {
		return err
	}
	return c.checkSpace(ctx, spec, size, present)
}

func (c *ESX) checkSpace(ctx context.Context, spec LoadSpec, size int64, present bool) error {
	pp, _ := spec.Profile.paths()
	short := spec.Slot.ShortName
	needVM := int64(ramMB(spec))<<20 + size/4
	if spec.Profile.VMDisk == messages.VMDiskDedicated {
		needVM = int64(ramMB(spec))<<20 + size
	}
	needImg := int64(0)
	if !present {
		needImg = size
	}
	need := map[string]int64{pp.vms.DS: needVM}
	need[pp.images.DS] += needImg
	for ds, n := range need {
		free, err := c.freeSpace(ctx, short, ds)
		if err != nil {
			return err
		}
		if free < n {
			return &OpError{Host: c.cfg.Name, Slot: short, Op: "check space on " + ds, Kind: ErrInsufficientResources,
				Err: fmt.Errorf("datastore %s has %d MB free, the load needs %d MB", ds, free>>20, ceilMB(n))}
		}
	}
	return nil
}

// TransferDisk puts the VM's disk in place (VCL's transfervm): it checks the base
// image is on the datastore and there is room (CheckSpace), and creates the VM folder.
// For vmdisk=dedicated it copies the base into a temporary folder and then moves it
// into the VM folder in one operation; for vmdisk=shared the disk is a linked clone
// that SetupVM creates. A dedicated disk already in place is kept (the move is atomic,
// so it is complete). A missing base image is ErrNotFound: call RetrieveImage first.
func (c *ESX) TransferDisk(ctx context.Context, spec LoadSpec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if err := c.resolveSpec(ctx, &spec); err != nil {
		return err
	}
	return c.transferDisk(ctx, spec, nil)
}

// transferDisk is TransferDisk; baseSize is the base image's size if the caller
// checked it is present, in a slot it just emptied.
func (c *ESX) transferDisk(ctx context.Context, spec LoadSpec, baseSize *int64) error {
	pp, _ := spec.Profile.paths()
	short, name := spec.Slot.ShortName, VMName(spec.Slot, spec.Image)
	base := pp.basePath(spec.Image.Name)
	fresh := baseSize != nil
	if !fresh {
		size, err := c.imageBytes(ctx, short, base)
		if errors.Is(err, ErrNotFound) {
			return &OpError{Host: c.cfg.Name, Slot: short, Op: "transfer disk", Kind: ErrNotFound, Err: fmt.Errorf("base image %s is missing", base)}
		}
		if err != nil {
			return err
		}
		baseSize = &size
	}
	if err := c.checkSpace(ctx, spec, *baseSize, true); err != nil {
		return err
	}
	dir := pp.vmDir(spec.Slot, spec.Image)
	if err := c.mkdir(ctx, short, dir); err != nil {
		return err
	}
	if spec.Profile.VMDisk != messages.VMDiskDedicated {
		return nil
	}
	target := dir.Join(name + ".vmdk")
	if !fresh {
		if ok, err := c.exists(ctx, short, target); err != nil || ok {
			return err
		}
	}
	// The temporary folder matches the slot pattern, so a crash leaves nothing that
	// the next RemoveSlotVMs does not delete.
	tmp := pp.vms.Join(tempName(name))
	if err := c.mkdir(ctx, short, tmp); err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.CallTimeout)
		defer cancel()
		_ = c.remove(cctx, short, tmp)
	}()
	if err := c.copyDisk(ctx, short, base, tmp.Join(name+".vmdk")); err != nil {
		return err
	}
	return c.moveDisk(ctx, short, tmp.Join(name+".vmdk"), target)
}

// SetupVM creates and configures the slot's VM (VCL's vmsetupconfig): named
// <short>_<imageid>-v<revision> in the folder of that name, with CPUs and RAM from
// the image minimums and the computer, NICs on Switch0/Switch1 with the computer's
// static MACs, the load's metadata in extraConfig, and its disk: a child of the shared
// base (linked clone) or the dedicated copy TransferDisk made. If the VM exists already
// with the same metadata, SetupVM does nothing; with other metadata it is ErrConflict.
// The disk is part of CreateVM's spec, so a failed SetupVM leaves no VM registered.
func (c *ESX) SetupVM(ctx context.Context, spec LoadSpec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if err := c.resolveSpec(ctx, &spec); err != nil {
		return err
	}
	_, err := c.setupVM(ctx, spec, false)
	return err
}

// setupVM is SetupVM; fresh: the caller just emptied the slot, so there is no VM to
// look for. It returns the VM.
func (c *ESX) setupVM(ctx context.Context, spec LoadSpec, fresh bool) (types.ManagedObjectReference, error) {
	pp, _ := spec.Profile.paths()
	short, name := spec.Slot.ShortName, VMName(spec.Slot, spec.Image)
	dir := pp.vmDir(spec.Slot, spec.Image)
	want := metadata(spec)
	var none types.ManagedObjectReference

	if !fresh {
		vms, err := c.vms(ctx, short)
		if err != nil {
			return none, err
		}
		for _, v := range vms {
			if v.name == name {
				if sameMetadata(v.extra, want) && len(v.devices.SelectByType((*types.VirtualDisk)(nil))) > 0 {
					return v.ref, nil
				}
				return none, &OpError{Host: c.cfg.Name, Slot: short, Op: "SetupVM " + name, Kind: ErrConflict,
					Err: errors.New("a VM of that name is registered with other metadata or no disk; remove the slot's VMs first")}
			}
		}
	}

	cfg := types.VirtualMachineConfigSpec{
		Name:     name,
		GuestId:  guestID(spec.Image.OSType),
		NumCPUs:  int32(cpus(spec)),
		MemoryMB: int64(ramMB(spec)),
		Files:    &types.VirtualMachineFileInfo{VmPathName: dir.Join(name + ".vmx").String()},
		Annotation: fmt.Sprintf("VCL slot %s (computer %d), image %s (id %d, revision %d)",
			short, spec.Slot.ComputerID, spec.Image.Name, spec.Image.ID, spec.Image.Revision),
	}
	for _, k := range sortedKeys(want) {
		cfg.ExtraConfig = append(cfg.ExtraConfig, &types.OptionValue{Key: k, Value: want[k]})
	}
	cfg.DeviceChange = append(cfg.DeviceChange, &types.VirtualDeviceConfigSpec{
		Operation: types.VirtualDeviceConfigSpecOperationAdd,
		Device: &types.VirtualLsiLogicController{VirtualSCSIController: types.VirtualSCSIController{
			SharedBus:         types.VirtualSCSISharingNoSharing,
			VirtualController: types.VirtualController{BusNumber: 0, VirtualDevice: types.VirtualDevice{Key: scsiKey}},
		}},
	})
	nics := []struct{ sw, mac string }{{spec.Profile.Switch0, spec.Slot.Eth0MAC}}
	if spec.Profile.Switch1 != "" {
		nics = append(nics, struct{ sw, mac string }{spec.Profile.Switch1, spec.Slot.Eth1MAC})
	}
	var ref types.ManagedObjectReference
	var nicDevs []types.BaseVirtualDeviceConfigSpec
	err := c.do(ctx, "resolve networks", short, c.cfg.CallTimeout, func(ctx context.Context, s *hostSession) error {
		inv, err := c.inventory(ctx, s)
		if err != nil {
			return err
		}
		nicDevs = nil
		for i, n := range nics {
			backing, err := c.networkBacking(ctx, inv, short, n.sw)
			if err != nil {
				return err
			}
			card := types.VirtualEthernetCard{
				VirtualDevice: types.VirtualDevice{Key: int32(-200 - i), Backing: backing,
					Connectable: &types.VirtualDeviceConnectInfo{StartConnected: true, AllowGuestControl: true, Connected: true}},
				AddressType: string(types.VirtualEthernetCardMacTypeGenerated),
			}
			if n.mac != "" {
				card.AddressType = string(types.VirtualEthernetCardMacTypeManual)
				card.MacAddress = strings.ToLower(n.mac)
			}
			nicDevs = append(nicDevs, &types.VirtualDeviceConfigSpec{
				Operation: types.VirtualDeviceConfigSpecOperationAdd,
				Device:    &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: card}},
			})
		}
		return nil
	})
	if err != nil {
		return none, err
	}
	cfg.DeviceChange = append(cfg.DeviceChange, nicDevs...)
	cfg.DeviceChange = append(cfg.DeviceChange, diskSpec(spec, scsiKey))
	info, err := c.task(ctx, "CreateVM "+name, short, func(ctx context.Context, s *hostSession) (*object.Task, error) {
		inv, err := c.inventory(ctx, s)
		if err != nil {
			return nil, err
		}
		return inv.folder.CreateVM(ctx, cfg, inv.pool, inv.host)
	})
	switch {
	case err == nil:
		ref = info.Result.(types.ManagedObjectReference)
	case errors.Is(err, ErrExists):
		// A retried CreateVM whose first answer was lost: the VM is ours if its
		// metadata says so.
		v, ferr := c.slotVM(ctx, spec.Slot, name)
		if ferr != nil || !sameMetadata(v.extra, want) {
			return none, err
		}
		ref = v.ref
	default:
		return none, err
	}
	return ref, nil
}

// networkBacking is the NIC backing of a port group, looked up once per login.
func (c *ESX) networkBacking(ctx context.Context, inv *inventory, short, name string) (types.BaseVirtualDeviceBackingInfo, error) {
	inv.mu.Lock()
	b, ok := inv.nets[name]
	inv.mu.Unlock()
	if ok {
		return b, nil
	}
	net, err := inv.finder.Network(ctx, name)
	var nf *find.NotFoundError
	if errors.As(err, &nf) {
		return nil, &OpError{Host: c.cfg.Name, Slot: short, Op: "find network " + name, Kind: ErrNotFound, Err: err}
	}
	if err != nil {
		return nil, err
	}
	b, err = net.EthernetCardBackingInfo(ctx)
	if err != nil {
		return nil, err
	}
	inv.mu.Lock()
	inv.nets[name] = b
	inv.mu.Unlock()
	return b, nil
}

// scsiKey is the device key CreateVM's spec gives the SCSI controller, so the disk
// in the same spec can name it.
const scsiKey = -100

// diskSpec is the VM's disk on the SCSI controller with key ctrlKey, unit 0: a new
// child (delta) disk of the shared base for a linked clone, or the dedicated copy
// TransferDisk made. It goes into CreateVM's spec, so a VM never exists without
// its disk and the load saves a ReconfigVM round trip.
func diskSpec(spec LoadSpec, ctrlKey int32) *types.VirtualDeviceConfigSpec {
	pp, _ := spec.Profile.paths()
	name := VMName(spec.Slot, spec.Image)
	file := pp.vmDir(spec.Slot, spec.Image).Join(name + ".vmdk").String()
	backing := &types.VirtualDiskFlatVer2BackingInfo{
		VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: file},
		DiskMode:                     string(types.VirtualDiskModePersistent),
		ThinProvisioned:              types.NewBool(true),
	}
	op := types.VirtualDeviceConfigSpecFileOperation("")
	if spec.Profile.VMDisk != messages.VMDiskDedicated {
		backing.Parent = &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: pp.basePath(spec.Image.Name).String()},
			DiskMode:                     string(types.VirtualDiskModePersistent),
		}
		op = types.VirtualDeviceConfigSpecFileOperationCreate
	}
	return &types.VirtualDeviceConfigSpec{
		Operation:     types.VirtualDeviceConfigSpecOperationAdd,
		FileOperation: op,
		Device: &types.VirtualDisk{VirtualDevice: types.VirtualDevice{
			Key: -1, ControllerKey: ctrlKey, UnitNumber: types.NewInt32(0), Backing: backing,
		}},
	}
}

// StartVM powers the slot's VM for the spec on (VCL's startvm).
func (c *ESX) StartVM(ctx context.Context, spec LoadSpec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	v, err := c.slotVM(ctx, spec.Slot, VMName(spec.Slot, spec.Image))
	if err != nil {
		return err
	}
	return c.powerOn(ctx, spec.Slot.ShortName, v)
}

func metadata(spec LoadSpec) map[string]string {
	m := map[string]string{
		KeyImageID:         strconv.FormatInt(spec.Image.ID, 10),
		KeyImageRevisionID: strconv.FormatInt(spec.Image.RevisionID, 10),
		KeyImageName:       spec.Image.Name,
		KeyComputerID:      strconv.FormatInt(spec.Slot.ComputerID, 10),
	}
	if spec.Reservation > 0 {
		m[KeyReservationID] = strconv.FormatInt(spec.Reservation, 10)
	}
	return m
}

// sameMetadata compares what identifies the load (not the reservation).
func sameMetadata(have, want map[string]string) bool {
	for _, k := range []string{KeyImageID, KeyImageRevisionID, KeyImageName, KeyComputerID} {
		if have[k] != want[k] {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}

func guestID(os string) string {
	switch os {
	case messages.OSLinux:
		return string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest)
	case messages.OSWindows:
		return string(types.VirtualMachineGuestOsIdentifierWindows9Server64Guest)
	}
	return string(types.VirtualMachineGuestOsIdentifierOtherGuest64)
}
