package esxsim

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// PowerEvent reports a VM's power state: when the watch starts (for every VM), when it
// changes, and when the VM is unregistered (Removed, PowerState "poweredOff").
type PowerEvent struct {
	Host string // Host.Name
	VM   string // managed object id, e.g. "3"
	Name string // VM name, e.g. "pc1_12-v3"
	// PowerState is "poweredOn", "poweredOff" or "suspended".
	PowerState string
	Removed    bool
	// BootTime is when the VM was last powered on (zero while off): a power cycle
	// shorter than the watch interval shows as a new BootTime.
	BootTime time.Time
	// ExtraConfig is the VM's extraConfig (the metadata the load wrote).
	ExtraConfig map[string]string
}

// PoweredOn reports whether the VM is running.
func (e PowerEvent) PoweredOn() bool {
	return e.PowerState == string(types.VirtualMachinePowerStatePoweredOn)
}

// DefaultWatchInterval is how often WatchPower reads a host's VMs unless
// Options.WatchInterval says otherwise. Each read is two SOAP calls.
const DefaultWatchInterval = 50 * time.Millisecond

// WatchPower calls fn for every VM of the host as the watch starts, then for each power
// state change (a new boot time included) and each VM unregistered, until ctx ends (it
// then returns nil).
//
// It reads, every Options.WatchInterval, the host's "vm" list and then the name, power state
// and extraConfig of the VMs listed, with the property collector through the observer
// login. A VM appears in the host's list only once its creation is complete; reading
// it earlier races inside vcsim, and vcsim does not notify changes of the host's list
// to WaitForUpdatesEx, so the watch polls rather than waits. A state that lasts less
// than the interval may be missed. fn runs on the watching goroutine and must not
// block for long.
func (h *Host) WatchPower(ctx context.Context, fn func(PowerEvent)) error {
	c, err := h.Observer(ctx)
	if err != nil {
		return err
	}
	f := find.NewFinder(c, true)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		return fmt.Errorf("esxsim: host %s: %w", h.Name, err)
	}
	f.SetDatacenter(dc)
	host, err := f.DefaultHostSystem(ctx)
	if err != nil {
		return fmt.Errorf("esxsim: host %s: %w", h.Name, err)
	}
	pc := property.DefaultCollector(c)
	known := map[types.ManagedObjectReference]PowerEvent{}
	tick := time.NewTicker(h.watchInterval)
	defer tick.Stop()
	for {
		var hs mo.HostSystem
		err := pc.RetrieveOne(ctx, host.Reference(), []string{"vm"}, &hs)
		var vms []mo.VirtualMachine
		skip := false
		if err == nil && len(hs.Vm) > 0 {
			err = pc.Retrieve(ctx, hs.Vm, []string{"name", "runtime.powerState", "summary.runtime.bootTime", "config.extraConfig"}, &vms)
			if fault.Is(err, &types.ManagedObjectNotFound{}) {
				err, skip = nil, true // unregistered between the two reads: next round
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("esxsim: host %s: watch: %w", h.Name, err)
		}
		if !skip {
			// Removals first: a VM removed and its successor powered on within one
			// interval are reported in the order they happened.
			seen := map[types.ManagedObjectReference]bool{}
			for _, vm := range vms {
				seen[vm.Self] = true
			}
			for r, old := range known {
				if !seen[r] {
					delete(known, r)
					old.Removed, old.PowerState = true, string(types.VirtualMachinePowerStatePoweredOff)
					fn(old)
				}
			}
			for _, vm := range vms {
				ev := PowerEvent{Host: h.Name, VM: vm.Self.Value, Name: vm.Name, PowerState: string(vm.Runtime.PowerState), ExtraConfig: map[string]string{}}
				if vm.Config != nil {
					ev.ExtraConfig = extraConfig(types.ArrayOfOptionValue{OptionValue: vm.Config.ExtraConfig})
				}
				if bt := vm.Summary.Runtime.BootTime; bt != nil {
					ev.BootTime = *bt
				}
				if old, ok := known[vm.Self]; !ok || old.PowerState != ev.PowerState || !old.BootTime.Equal(ev.BootTime) {
					fn(ev)
				}
				known[vm.Self] = ev
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// WatchPower watches every host of the lab (see Host.WatchPower) until ctx ends.
// fn is called from one goroutine per host.
func (l *Lab) WatchPower(ctx context.Context, fn func(PowerEvent)) error {
	var wg sync.WaitGroup
	errs := make([]error, len(l.Hosts))
	for i, h := range l.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.WatchPower(ctx, fn)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func extraConfig(v any) map[string]string {
	m := map[string]string{}
	arr, ok := v.(types.ArrayOfOptionValue)
	if !ok {
		return m
	}
	for _, o := range arr.OptionValue {
		ov := o.GetOptionValue()
		if s, ok := ov.Value.(string); ok {
			m[ov.Key] = s
		} else {
			m[ov.Key] = fmt.Sprint(ov.Value)
		}
	}
	return m
}
