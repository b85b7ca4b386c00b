package metrics

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vclq/vclq/messages"
)

// A nil *Worker and *Bridge are valid: every method does nothing.
func TestNilIsOff(t *testing.T) {
	var w *Worker
	w.SetSlots(4)
	w.JobStarted()()
	w.JobDone(messages.KindNew, JobSuccess, time.Second)
	w.Step(messages.KindNew, messages.LoadStartVM, messages.PhaseEnd, time.Second)
	w.Result(messages.KindNew, messages.OutcomeSuccess)
	w.Redelivery()
	w.Stale()
	w.Superseded()
	w.LeaseRenewed()
	w.LeaseRenewalFailed()
	w.LeaseLost(LeaseLostGuard)
	w.DeadLetter(DeadLetterSwept)
	w.HostCallStarted("esx")(errors.New("x"))
	w.QueueInfo(1, 2, 3)
	var b *Bridge
	b.Polled(true, 1, 1)
	b.Applied(EventLoadlog, time.Now())
	b.Terminated(EventResult)
	b.DatabaseError(DBTransient)
	b.CheckedIn()
}

// Label values outside the bounded sets are folded into unknown / other.
func TestLabelsAreBounded(t *testing.T) {
	cases := []struct {
		name, got, want string
	}{
		{"request kind", kindLabel(messages.KindReload), "reload"},
		{"not a kind", kindLabel("7001"), Unknown},
		{"loadstate name", stepLabel(messages.LoadTransferVM), messages.LoadTransferVM},
		{"free text step", stepLabel("copy of reservation 7001"), Other},
		{"allowed", oneOf("a", "a", "b"), "a"},
		{"not allowed", oneOf("c", "a", "b"), Other},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s: %q, want %q", c.name, c.got, c.want)
		}
	}
}

// Two components cannot share names on one registry, and a fresh registry per process
// holds no global state: NewWorker twice on one registry fails, on two succeeds.
func TestRegistryPerProcess(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewWorker(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := NewWorker(reg); err == nil {
		t.Error("a second NewWorker on the same registry succeeded")
	}
	if _, err := NewWorker(NewRegistry()); err != nil {
		t.Errorf("NewWorker on a new registry: %v", err)
	}
	if _, err := NewBridge(reg); err != nil {
		t.Errorf("NewBridge beside a worker: %v", err)
	}
}
