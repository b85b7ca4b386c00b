package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// vmInfo is a registered VM as the property collector shows it.
type vmInfo struct {
	ref     types.ManagedObjectReference
	name    string
	dir     dsPath // folder of the vmx
	hasDir  bool
	power   PowerState
	extra   map[string]string
	devices object.VirtualDeviceList
}

// vms lists the registered VMs of the slot: those whose name or folder matches VCL's
// pattern ^<short>_\d+-v\d+. It reads names, vmx paths and power states of every VM
// on the host, then the metadata and devices of the slot's VMs only.
func (c *ESX) vms(ctx context.Context, short string) ([]vmInfo, error) {
	re := slotPattern(short)
	var out []vmInfo
	// The host's "vm" list, then those VMs: a VM is listed once it is registered
	// (and, in vcsim, once its creation is complete).
	err := c.do(ctx, "list VMs", short, c.cfg.CallTimeout, func(ctx context.Context, s *hostSession) error {
		inv, err := c.inventory(ctx, s)
		if err != nil {
			return err
		}
		pc := property.DefaultCollector(s.vc)
		for try := 0; ; try++ {
			out = nil
			err := c.listSlotVMs(ctx, pc, inv, re, &out)
			if err != nil && classify(err) == ErrNotFound && try < 3 {
				continue // a VM was unregistered between two reads
			}
			return err
		}
	})
	return out, err
}

func (c *ESX) listSlotVMs(ctx context.Context, pc *property.Collector, inv *inventory, re *regexp.Regexp, out *[]vmInfo) error {
	var hs mo.HostSystem
	if err := pc.RetrieveOne(ctx, inv.host.Reference(), []string{"vm"}, &hs); err != nil {
		return err
	}
	if len(hs.Vm) == 0 {
		return nil
	}
	var all []mo.VirtualMachine
	if err := pc.Retrieve(ctx, hs.Vm, []string{"name", "config.files.vmPathName", "runtime.powerState"}, &all); err != nil {
		return err
	}
	var refs []types.ManagedObjectReference
	byRef := map[types.ManagedObjectReference]int{}
	for _, m := range all {
		vi := vmInfo{ref: m.Self, name: m.Name, power: PowerState(m.Runtime.PowerState), extra: map[string]string{}}
		if m.Config != nil {
			if p, ok := parseDSPath(m.Config.Files.VmPathName); ok {
				vi.dir, vi.hasDir = p.Dir(), true
			}
		}
		if re.MatchString(vi.name) || (vi.hasDir && re.MatchString(vi.dir.Base())) {
			byRef[m.Self] = len(*out)
			*out = append(*out, vi)
			refs = append(refs, m.Self)
		}
	}
	if len(refs) == 0 {
		return nil
	}
	var details []mo.VirtualMachine
	if err := pc.Retrieve(ctx, refs, []string{"config.extraConfig", "config.hardware.device"}, &details); err != nil {
		return err
	}
	for _, m := range details {
		i, ok := byRef[m.Self]
		if !ok || m.Config == nil {
			continue
		}
		for _, o := range m.Config.ExtraConfig {
			ov := o.GetOptionValue()
			(*out)[i].extra[ov.Key] = fmt.Sprint(ov.Value)
		}
		(*out)[i].devices = m.Config.Hardware.Device
	}
	return nil
}

// orphans lists folders of the slot under the VM path that no registered VM uses.
func (c *ESX) orphans(ctx context.Context, slot Slot, pp profilePaths, vms []vmInfo) ([]dsPath, error) {
	files, err := c.list(ctx, slot.ShortName, pp.vms, slot.ShortName+"_*")
	if err != nil {
		return nil, err
	}
	used := map[dsPath]bool{}
	for _, v := range vms {
		if v.hasDir {
			used[v.dir] = true
		}
	}
	re := slotPattern(slot.ShortName)
	var out []dsPath
	for _, f := range files {
		d := pp.vms.Join(f.Name)
		if f.IsDir && re.MatchString(f.Name) && !used[d] {
			out = append(out, d)
		}
	}
	return out, nil
}

// Status reports the slot's VM as the host shows it: registered or only present on
// disk, power state and the metadata the load wrote. It does not change anything.
func (c *ESX) Status(ctx context.Context, slot Slot, p Profile) (VMStatus, error) {
	if err := slot.Validate(); err != nil {
		return VMStatus{}, err
	}
	pp, err := c.hostPaths(ctx, slot.ShortName, p)
	if err != nil {
		return VMStatus{}, err
	}
	vms, err := c.vms(ctx, slot.ShortName)
	if err != nil {
		return VMStatus{}, err
	}
	orphans, err := c.orphans(ctx, slot, pp, vms)
	if err != nil {
		return VMStatus{}, err
	}
	var st VMStatus
	for i, v := range vms {
		if i > 0 {
			st.Others = append(st.Others, v.name)
			continue
		}
		st.Name, st.Registered, st.Present, st.PowerState = v.name, true, v.hasDir, v.power
		st.ImageID, _ = strconv.ParseInt(v.extra[KeyImageID], 10, 64)
		st.ImageRevisionID, _ = strconv.ParseInt(v.extra[KeyImageRevisionID], 10, 64)
		st.ComputerID, _ = strconv.ParseInt(v.extra[KeyComputerID], 10, 64)
		st.ImageName = v.extra[KeyImageName]
	}
	for _, o := range orphans {
		if st.Name == "" && !st.Present {
			st.Name, st.Present = o.Base(), true
			continue
		}
		st.Others = append(st.Others, o.String())
	}
	return st, nil
}

// RemoveSlotVMs removes every VM of the slot, as a load begins (VCL's startload):
// each registered VM whose name or folder matches ^<short>_\d+-v\d+ is powered off,
// unregistered and its folder deleted; orphan folders of that pattern under the VM
// path are deleted too. It never uses Destroy_Task. A folder that does not match the
// pattern is never deleted (its VM is only unregistered). Removing nothing is success.
func (c *ESX) RemoveSlotVMs(ctx context.Context, slot Slot, p Profile) error {
	if err := slot.Validate(); err != nil {
		return err
	}
	pp, err := c.hostPaths(ctx, slot.ShortName, p)
	if err != nil {
		return err
	}
	log := c.log.With().Int64("computer", slot.ComputerID).Str("slot", slot.ShortName).Logger()
	vms, err := c.vms(ctx, slot.ShortName)
	if err != nil {
		return err
	}
	re := slotPattern(slot.ShortName)
	for _, v := range vms {
		if err := c.unregister(ctx, slot.ShortName, v); err != nil {
			return err
		}
		if v.hasDir && re.MatchString(v.dir.Base()) {
			if err := c.remove(ctx, slot.ShortName, v.dir); err != nil {
				return err
			}
		} else if v.hasDir {
			log.Warn().Str("vm", v.name).Str("dir", v.dir.String()).Msg("unregistered a slot VM whose folder does not match the slot pattern; folder kept")
		}
		log.Info().Str("vm", v.name).Msg("removed VM")
	}
	orphans, err := c.orphans(ctx, slot, pp, nil)
	if err != nil {
		return err
	}
	for _, o := range orphans {
		if err := c.remove(ctx, slot.ShortName, o); err != nil {
			return err
		}
		log.Info().Str("dir", o.String()).Msg("removed orphan folder")
	}
	return nil
}

// Remove is RemoveSlotVMs: de-provisioning (VCL's control_VM remove).
func (c *ESX) Remove(ctx context.Context, slot Slot, p Profile) error {
	return c.RemoveSlotVMs(ctx, slot, p)
}

// unregister powers a VM off (hard) and unregisters it; a VM already gone is fine.
func (c *ESX) unregister(ctx context.Context, short string, v vmInfo) error {
	if v.power != PoweredOff {
		if err := c.powerOff(ctx, short, v.ref); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	err := c.do(ctx, "UnregisterVM "+v.name, short, c.cfg.CallTimeout, func(ctx context.Context, s *hostSession) error {
		return object.NewVirtualMachine(s.vc, v.ref).Unregister(ctx)
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// slotVM is the one registered VM of the slot (named name, if name is not empty).
func (c *ESX) slotVM(ctx context.Context, slot Slot, name string) (vmInfo, error) {
	if err := slot.Validate(); err != nil {
		return vmInfo{}, err
	}
	vms, err := c.vms(ctx, slot.ShortName)
	if err != nil {
		return vmInfo{}, err
	}
	var found []vmInfo
	for _, v := range vms {
		if name == "" || v.name == name {
			found = append(found, v)
		}
	}
	switch len(found) {
	case 0:
		what := "no registered VM"
		if name != "" {
			what = "no registered VM " + name
		}
		return vmInfo{}, &OpError{Host: c.cfg.Name, Slot: slot.ShortName, Op: "find VM", Kind: ErrNotFound, Err: errors.New(what)}
	case 1:
		return found[0], nil
	default:
		names := make([]string, len(found))
		for i, v := range found {
			names[i] = v.name
		}
		return vmInfo{}, &OpError{Host: c.cfg.Name, Slot: slot.ShortName, Op: "find VM", Kind: ErrConflict,
			Err: fmt.Errorf("%d registered VMs: %v", len(found), names)}
	}
}

// PowerOn powers the slot's VM on; a VM already on is fine. It returns when the host
// reports it on.
func (c *ESX) PowerOn(ctx context.Context, slot Slot) error {
	v, err := c.slotVM(ctx, slot, "")
	if err != nil {
		return err
	}
	return c.powerOn(ctx, slot.ShortName, v)
}

func (c *ESX) powerOn(ctx context.Context, short string, v vmInfo) error {
	if v.power == PoweredOn {
		return nil
	}
	_, err := c.task(ctx, "PowerOnVM "+v.name, short, func(ctx context.Context, s *hostSession) (*object.Task, error) {
		return object.NewVirtualMachine(s.vc, v.ref).PowerOn(ctx)
	})
	if errors.Is(err, ErrInvalidState) {
		if st, perr := c.powerState(ctx, short, v.ref); perr == nil && st == PoweredOn {
			return nil
		}
	}
	return err
}

// PowerOff powers the slot's VM off hard; a VM already off is fine.
func (c *ESX) PowerOff(ctx context.Context, slot Slot) error {
	v, err := c.slotVM(ctx, slot, "")
	if err != nil {
		return err
	}
	if v.power == PoweredOff {
		return nil
	}
	return c.powerOff(ctx, slot.ShortName, v.ref)
}

func (c *ESX) powerOff(ctx context.Context, short string, ref types.ManagedObjectReference) error {
	_, err := c.task(ctx, "PowerOffVM "+ref.Value, short, func(ctx context.Context, s *hostSession) (*object.Task, error) {
		return object.NewVirtualMachine(s.vc, ref).PowerOff(ctx)
	})
	if errors.Is(err, ErrInvalidState) {
		if st, perr := c.powerState(ctx, short, ref); perr == nil && st == PoweredOff {
			return nil
		}
	}
	return err
}

// Reset resets (hard reboots) the slot's VM, which must be on.
func (c *ESX) Reset(ctx context.Context, slot Slot) error {
	v, err := c.slotVM(ctx, slot, "")
	if err != nil {
		return err
	}
	_, err = c.task(ctx, "ResetVM "+v.name, slot.ShortName, func(ctx context.Context, s *hostSession) (*object.Task, error) {
		return object.NewVirtualMachine(s.vc, v.ref).Reset(ctx)
	})
	return err
}

func (c *ESX) powerState(ctx context.Context, short string, ref types.ManagedObjectReference) (PowerState, error) {
	var m mo.VirtualMachine
	err := c.do(ctx, "power state", short, c.cfg.CallTimeout, func(ctx context.Context, s *hostSession) error {
		return property.DefaultCollector(s.vc).RetrieveOne(ctx, ref, []string{"runtime.powerState"}, &m)
	})
	return PowerState(m.Runtime.PowerState), err
}

// waitPowerOff waits up to timeout for the VM to be off; it reports whether it is.
func (c *ESX) waitPowerOff(ctx context.Context, short string, ref types.ManagedObjectReference, timeout time.Duration) (bool, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	off := false
	err := c.do(wctx, "wait for power off", short, timeout, func(ctx context.Context, s *hostSession) error {
		return property.Wait(ctx, property.DefaultCollector(s.vc), ref, []string{"runtime.powerState"}, func(ch []types.PropertyChange) bool {
			for _, p := range ch {
				if p.Val == types.VirtualMachinePowerStatePoweredOff {
					off = true
					return true
				}
			}
			return false
		})
	})
	if off {
		return true, nil
	}
	if ctx.Err() != nil {
		return false, context.Cause(ctx)
	}
	if wctx.Err() != nil {
		return false, nil // timed out: the caller powers off hard
	}
	return false, err
}
