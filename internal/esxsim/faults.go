package esxsim

import (
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// FaultRule fails or delays SOAP calls of the worker login on one host. Rules are
// checked in the order they were added; the first that fires decides.
type FaultRule struct {
	// Methods are SOAP method names ("CreateVM_Task", "RetrievePropertiesEx", ...).
	// default: every method.
	Methods []string
	// ObjectType is the managed object type called ("VirtualMachine", ...).
	// default: any.
	ObjectType string
	// Probability that a matching call fires the rule, in (0, 1]. default: 1.
	Probability float64
	// Skip lets this many matching calls through before the rule starts firing.
	Skip int
	// Max is how often the rule fires at most. default: unlimited.
	Max int
	// Delay is slept before the call is answered (with or without a fault).
	Delay time.Duration
	// Fault builds the fault to return; nil means the call only gets Delay.
	Fault func() types.BaseMethodFault
	// InTask accepts the call and fails the task it returns with Fault, without
	// doing the task's work, as ESX reports most faults, instead of failing the call
	// itself. Only for methods that return a task (*_Task); others fail the call.
	InTask bool
}

// TransientFaults is a rule that fails each call of the worker with probability p
// with a transient fault, chosen at random among TaskInProgress, HostCommunication
// (the network to the host failed) and Timedout.
func TransientFaults(p float64) FaultRule {
	return FaultRule{Probability: p, Fault: func() types.BaseMethodFault {
		switch rand.IntN(3) {
		case 0:
			return &types.TaskInProgress{}
		case 1:
			return &types.HostCommunication{}
		default:
			return &types.Timedout{}
		}
	}}
}

// Permanent is a rule that fails every call of method with fault f.
func Permanent(method string, f func() types.BaseMethodFault) FaultRule {
	return FaultRule{Methods: []string{method}, Fault: f}
}

// AddFault installs a rule and returns a function that removes it.
func (h *Host) AddFault(r FaultRule) (remove func()) { return h.faults.add(r) }

// ClearFaults removes every rule added with AddFault (CloneVM_Task stays refused).
func (h *Host) ClearFaults() { h.faults.clear() }

// Calls reports how many calls of method the worker login has made (faulted or not).
func (h *Host) Calls(method string) int {
	h.faults.mu.Lock()
	defer h.faults.mu.Unlock()
	return h.faults.byMethod[method]
}

// CallsByMethod is a copy of the worker login's call counts per SOAP method.
func (h *Host) CallsByMethod() map[string]int {
	h.faults.mu.Lock()
	defer h.faults.mu.Unlock()
	return maps.Clone(h.faults.byMethod)
}

// PeakDelayed is the largest number of worker calls that were inside a rule's Delay
// at the same time: with a delay rule on a method, how many such calls the client ran
// concurrently.
func (h *Host) PeakDelayed() int {
	h.faults.mu.Lock()
	defer h.faults.mu.Unlock()
	return h.faults.peak
}

// FaultStats reports how many calls of the worker login the host has seen and how
// many of them were failed by a rule (CloneVM_Task refusals included).
func (h *Host) FaultStats() (calls, faulted int) { return h.faults.stats() }

type rule struct {
	FaultRule
	id, seen, fired int
}

type injector struct {
	mu            sync.Mutex
	rules         []*rule
	nextID        int
	calls, faults int
	byMethod      map[string]int
	refuseClone   bool
	inFlight      int
	peak          int
	pending       map[types.ManagedObjectReference][]types.BaseMethodFault // in-task faults
}

func newInjector(refuseClone bool) *injector {
	return &injector{refuseClone: refuseClone, byMethod: map[string]int{}, pending: map[types.ManagedObjectReference][]types.BaseMethodFault{}}
}

func (in *injector) add(r FaultRule) func() {
	if r.Probability <= 0 || r.Probability > 1 {
		r.Probability = 1
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.nextID++
	id := in.nextID
	in.rules = append(in.rules, &rule{FaultRule: r, id: id})
	return func() {
		in.mu.Lock()
		defer in.mu.Unlock()
		in.rules = slices.DeleteFunc(in.rules, func(x *rule) bool { return x.id == id })
	}
}

func (in *injector) clear() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.rules = nil
}

func (in *injector) stats() (int, int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.calls, in.faults
}

// decide runs before every SOAP call (from Host.handle): fault fails the call now;
// inTask means the call proceeds but its task will fail.
func (in *injector) decide(ctx *simulator.Context, m *simulator.Method) (fault types.BaseMethodFault, inTask bool) {
	if in.refuseClone && m.Name == "CloneVM_Task" {
		in.mu.Lock()
		in.faults++
		in.mu.Unlock()
		return &types.NotSupported{}, false
	}
	if !isWorkerCall(ctx, m) {
		return nil, false
	}
	in.mu.Lock()
	in.calls++
	in.byMethod[m.Name]++
	var fired *rule
	for _, r := range in.rules {
		if len(r.Methods) > 0 && !slices.Contains(r.Methods, m.Name) {
			continue
		}
		if r.ObjectType != "" && r.ObjectType != m.This.Type {
			continue
		}
		if r.Max > 0 && r.fired >= r.Max {
			continue
		}
		if rand.Float64() >= r.Probability {
			continue
		}
		r.seen++
		if r.seen <= r.Skip {
			continue
		}
		r.fired++
		fired = r
		break
	}
	var delay time.Duration
	if fired != nil {
		delay = fired.Delay
		if fired.Fault != nil {
			fault = fired.Fault()
			in.faults++
			inTask = fired.InTask && strings.HasSuffix(m.Name, "_Task")
		}
	}
	if delay > 0 {
		in.inFlight++
		in.peak = max(in.peak, in.inFlight)
	}
	in.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
		in.mu.Lock()
		in.inFlight--
		in.mu.Unlock()
	}
	if inTask {
		in.mu.Lock()
		in.pending[m.This] = append(in.pending[m.This], fault)
		in.mu.Unlock()
		return nil, true
	}
	return fault, false
}

// isWorkerCall tells calls of the worker login from the observer's and from
// unauthenticated bootstrap calls (RetrieveServiceContent).
func isWorkerCall(ctx *simulator.Context, m *simulator.Method) bool {
	if ctx.Session != nil {
		return ctx.Session.UserName != ObserverUsername
	}
	if l, ok := m.Body.(*types.Login); ok {
		return l.UserName != ObserverUsername
	}
	return false
}
