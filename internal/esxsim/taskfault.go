package esxsim

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Faults inside tasks. A FaultRule with InTask lets the call through; the next task
// vcsim creates for the called object then fails with the rule's fault, without
// doing its work, as ESX reports most faults. The task is caught as vcsim registers
// it (a Registry handler runs before the task's goroutine starts), so its work is
// replaced before it can begin.

// taskFaults is the Registry handler; pending maps a called object to the faults its
// next tasks get.
type taskFaults struct {
	in *injector
}

var taskFaultsRef = types.ManagedObjectReference{Type: "EsxsimTaskFaults", Value: "esxsim-task-faults"}

func (t *taskFaults) Reference() types.ManagedObjectReference { return taskFaultsRef }

func (t *taskFaults) PutObject(_ *simulator.Context, obj mo.Reference) {
	task, ok := obj.(*simulator.Task)
	if !ok || task.Info.Entity == nil {
		return
	}
	t.in.mu.Lock()
	queue := t.in.pending[*task.Info.Entity]
	var fault types.BaseMethodFault
	if len(queue) > 0 {
		fault = queue[0]
		if len(queue) == 1 {
			delete(t.in.pending, *task.Info.Entity)
		} else {
			t.in.pending[*task.Info.Entity] = queue[1:]
		}
	}
	t.in.mu.Unlock()
	if fault != nil {
		task.Execute = func(*simulator.Task) (types.AnyType, types.BaseMethodFault) { return nil, fault }
	}
}

func (t *taskFaults) UpdateObject(*simulator.Context, mo.Reference, []types.PropertyChange) {}

func (t *taskFaults) RemoveObject(*simulator.Context, types.ManagedObjectReference) {}
