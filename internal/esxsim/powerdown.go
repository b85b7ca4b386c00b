package esxsim

import (
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// PowerDown is a call that stops a VM, seen before the host carries it out.
type PowerDown struct {
	Host string // Host.Name
	VM   string // managed object id, as in PowerEvent.VM
	Name string // VM name
	// Method is PowerOffVM_Task, ResetVM_Task, UnregisterVM or Destroy_Task.
	Method string
	// Observer: the call came from the observer login (Host.Observer), not the
	// worker's.
	Observer bool
}

// Removed reports whether the call takes the VM off the host (unregister or destroy).
func (p PowerDown) Removed() bool { return p.Method == "UnregisterVM" || p.Method == "Destroy_Task" }

// Reset reports whether the call is a hard reboot (the VM stays on).
func (p PowerDown) Reset() bool { return p.Method == "ResetVM_Task" }

// powerDownMethods are the calls OnPowerDown reports.
var powerDownMethods = map[string]bool{"PowerOffVM_Task": true, "ResetVM_Task": true, "UnregisterVM": true, "Destroy_Task": true}

// OnPowerDown sets fn to run before the host carries out a call that stops a VM (any
// login's), unless a fault rule fails the call. The call waits for fn, so a guest
// that follows its VM is down when PowerOff or Unregister returns, as on ESX, rather
// than a watch interval later, when a new VM in the slot may already be asking for
// it. fn must return in bounded time. One fn per host; nil removes it.
func (h *Host) OnPowerDown(fn func(PowerDown)) {
	h.powerDown.set(fn)
}

// handle is the vcsim Registry.Handler: it runs before every SOAP call, decides the
// fault rules (a failed call stops nothing), then runs the power-down hook.
func (h *Host) handle(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	fault, inTask := h.faults.decide(ctx, m)
	if fault == nil && !inTask {
		h.powerDown.call(h.Name, ctx, m)
	}
	return nil, fault
}

// OnPowerDown sets fn on every host of the lab (see Host.OnPowerDown).
func (l *Lab) OnPowerDown(fn func(PowerDown)) {
	for _, h := range l.Hosts {
		h.OnPowerDown(fn)
	}
}

type powerDownHook struct {
	mu sync.Mutex
	fn func(PowerDown)
}

func (p *powerDownHook) set(fn func(PowerDown)) {
	p.mu.Lock()
	p.fn = fn
	p.mu.Unlock()
}

// call runs the hook for m if it stops a VM. It runs from vcsim's Registry.Handler,
// before the method takes any object lock.
func (p *powerDownHook) call(host string, ctx *simulator.Context, m *simulator.Method) {
	if !powerDownMethods[m.Name] || m.This.Type != "VirtualMachine" {
		return
	}
	p.mu.Lock()
	fn := p.fn
	p.mu.Unlock()
	if fn == nil {
		return
	}
	vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	var name string
	ctx.WithLock(vm, func() { name = vm.Name })
	observer := ctx.Session != nil && ctx.Session.UserName == ObserverUsername
	fn(PowerDown{Host: host, VM: m.This.Value, Name: name, Method: m.Name, Observer: observer})
}
