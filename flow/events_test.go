package flow

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/publisher"
	"github.com/vclq/vclq/worker"
)

var errStoreDown = errors.New("event store down")

// flakySink is an event store that is down for a while after its first call: a call
// then fails at once, or, with block, waits until its context ends (as the worker's
// publisher does, retrying inside). It stores each event once (by dedup key), in
// order, and says how long the runner may keep trying (PublishBudget).
type flakySink struct {
	sinkConf

	mu     sync.Mutex
	first  time.Time
	calls  int
	events []worker.StepEvent
	seen   map[string]bool
}

// sinkConf is how a flakySink behaves.
type sinkConf struct {
	budget  time.Duration
	downFor time.Duration
	block   bool
	callErr error // when set, every call fails with it
}

func (s *flakySink) PublishBudget() time.Duration { return s.budget }

func (s *flakySink) Loadlog(ctx context.Context, e worker.StepEvent) error {
	return s.store(ctx, []worker.StepEvent{e})
}

func (s *flakySink) store(ctx context.Context, evs []worker.StepEvent) error {
	s.mu.Lock()
	if s.first.IsZero() {
		s.first = time.Now()
	}
	s.calls++
	back := s.first.Add(s.downFor)
	s.mu.Unlock()
	switch {
	case s.callErr != nil:
		return s.callErr
	case time.Now().Before(back) && s.block:
		t := time.NewTimer(time.Until(back))
		defer t.Stop()
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", errStoreDown, context.Cause(ctx))
		case <-t.C:
		}
	case time.Now().Before(back):
		return errStoreDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
	for _, e := range evs {
		key := fmt.Sprintf("%d-%s-%s", e.Step, e.Name, e.Phase)
		if !s.seen[key] {
			s.seen[key] = true
			s.events = append(s.events, e)
		}
	}
	return nil
}

// names lists the begin rows, as recorder.names does.
func (s *flakySink) names() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.events {
		if e.Phase == messages.PhaseBegin {
			out = append(out, e.Name)
		}
	}
	return strings.Join(out, ",")
}

// flakyBatchSink is flakySink taking batches.
type flakyBatchSink struct{ *flakySink }

func (s flakyBatchSink) LoadlogBatch(ctx context.Context, evs []worker.StepEvent) error {
	return s.store(ctx, evs)
}

// A job's outcome is claimed only once all of its loadlog events are stored: an event
// store that stays down longer than the publish budget makes the handler fail with a
// retryable error (the pool then publishes no result and the request is run again),
// even when the flow itself succeeded or failed permanently; a store that comes back
// within the budget loses no event.
func TestHandlerWaitsForEveryLoadlogEvent(t *testing.T) {
	const wantNew = "statuscheck," + fullLoad + ",nodeready"
	permanentHostFault := func(hs *harness) {
		hs.vms.failOn["CreateVM"] = &hypervisor.OpError{Host: "esx", Op: "CreateVM", Kind: hypervisor.ErrInsufficientResources, Err: errBoom}
	}
	tests := []struct {
		name      string
		sink      sinkConf
		batched   bool
		setup     func(hs *harness)
		wantOK    bool
		maxCalls  int // checked when > 0
		maxTook   time.Duration
		wantNames string // checked when wantOK
	}{
		{name: "store down longer than the budget", sink: sinkConf{budget: 300 * time.Millisecond, downFor: time.Hour}, maxTook: 3 * time.Second},
		{name: "store down longer than the budget, batched", batched: true, sink: sinkConf{budget: 300 * time.Millisecond, downFor: time.Hour}, maxTook: 3 * time.Second},
		{name: "store hanging longer than the budget", sink: sinkConf{budget: 300 * time.Millisecond, downFor: time.Hour, block: true}, maxTook: 3 * time.Second},
		{name: "store hanging longer than the budget, batched", batched: true, sink: sinkConf{budget: 300 * time.Millisecond, downFor: time.Hour, block: true}, maxTook: 3 * time.Second},
		{name: "store down, the flow failed permanently", sink: sinkConf{budget: 300 * time.Millisecond, downFor: time.Hour}, setup: permanentHostFault, maxTook: 3 * time.Second},
		{name: "a rejected event is not retried", batched: true, maxCalls: 1, maxTook: 2 * time.Second,
			sink: sinkConf{budget: time.Minute, callErr: fmt.Errorf("reservation 1: %w: denied", publisher.ErrRejected)}},
		{name: "store back within the budget", sink: sinkConf{budget: 5 * time.Second, downFor: 400 * time.Millisecond}, wantOK: true, wantNames: wantNew, maxTook: 5 * time.Second},
		{name: "store back within the budget, batched", batched: true, sink: sinkConf{budget: 5 * time.Second, downFor: 400 * time.Millisecond}, wantOK: true, wantNames: wantNew, maxTook: 5 * time.Second},
		{name: "store hanging, back within the budget, batched", batched: true, sink: sinkConf{budget: 5 * time.Second, downFor: 400 * time.Millisecond, block: true}, wantOK: true, wantNames: wantNew, maxTook: 8 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, nil)
			req := request(t, messages.KindNew)
			hs.vms.images[req.Image.Name] = true
			if tc.setup != nil {
				tc.setup(hs)
			}
			sink := &flakySink{sinkConf: tc.sink}
			var events worker.EventSink = sink
			if tc.batched {
				events = flakyBatchSink{sink}
			}
			start := time.Now()
			res, err := hs.h.Handle(context.Background(), &worker.Job{Request: req, Seq: 9, Delivery: 1, MaxDeliver: 3, Fence: 1, Events: events, Worker: "w1"})
			took := time.Since(start)
			sink.mu.Lock()
			calls, stored := sink.calls, len(sink.events)
			sink.mu.Unlock()
			t.Logf("took %s, %d sink calls, %d events stored; err: %v", took.Round(time.Millisecond), calls, stored, err)
			if took > tc.maxTook {
				t.Errorf("Handle took %s, more than %s", took, tc.maxTook)
			}
			if tc.maxCalls > 0 && calls > tc.maxCalls {
				t.Errorf("%d sink calls, want at most %d", calls, tc.maxCalls)
			}
			if tc.wantOK {
				if err != nil {
					t.Fatalf("Handle: %v", err)
				}
				if got := sink.names(); got != tc.wantNames {
					t.Errorf("stored loadlog\n got %s\nwant %s", got, tc.wantNames)
				}
				for i, e := range sink.events {
					if i > 0 && e.Step < sink.events[i-1].Step {
						t.Errorf("event %d (step %d) stored after step %d", i, e.Step, sink.events[i-1].Step)
					}
				}
				return
			}
			if err == nil {
				t.Fatalf("Handle succeeded with %d events stored: a result would be claimed before its loadlog events", stored)
			}
			if worker.IsPermanent(err) {
				t.Errorf("err %v is permanent: the request would not be run again to store its events", err)
			}
			if !strings.Contains(err.Error(), "loadlog events not stored") {
				t.Errorf("err %v does not say the events were not stored", err)
			}
			if res.RequestState != messages.StateFailed || res.ComputerState != messages.StateFailed || res.Passwords != nil {
				t.Errorf("result %s/%s (passwords %v), want failed/failed without passwords", res.RequestState, res.ComputerState, res.Passwords)
			}
		})
	}
}

// flush waits as long as events keep being stored, even far beyond one budget in
// all, and gives up after one budget without progress (a sink that hangs, ignoring its
// context), reporting the events not stored.
func TestFlushWaitsWhileEventsAreStored(t *testing.T) {
	tests := []struct {
		name       string
		each       time.Duration // how long the sink takes per event
		wantStored int
		wantErr    error
		maxTook    time.Duration
	}{
		{name: "slow but progressing", each: 80 * time.Millisecond, wantStored: 10, maxTook: 3 * time.Second},
		{name: "hanging", each: 2 * time.Second, wantStored: 0, wantErr: errFlushTimeout, maxTook: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sink := &slowSink{budget: 200 * time.Millisecond, each: tc.each}
			r := newRunner(sink, newHarness(t, nil).h.cfg.Log)
			r.grace = 0 // flush waits one budget without progress
			for i := 1; i <= 10; i++ {
				r.emit(context.Background(), i, messages.LoadStartVM, messages.PhaseBegin, "", 0)
			}
			start := time.Now()
			err := r.flush()
			took := time.Since(start)
			t.Logf("flush took %s: %v; %d stored", took.Round(time.Millisecond), err, sink.n())
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) || sink.n() != tc.wantStored {
				t.Fatalf("flush = %v with %d of 10 events stored, want %v with %d", err, sink.n(), tc.wantErr, tc.wantStored)
			}
			if tc.wantErr != nil && !strings.Contains(err.Error(), "10 of 10 loadlog events not stored") {
				t.Errorf("err %v does not count the events not stored", err)
			}
			if took > tc.maxTook || (tc.wantErr == nil && took < 2*sink.budget) {
				t.Errorf("flush took %s", took)
			}
		})
	}
}

// slowSink stores each event after a pause.
type slowSink struct {
	budget, each time.Duration
	mu           sync.Mutex
	stored       int
}

func (s *slowSink) PublishBudget() time.Duration { return s.budget }
func (s *slowSink) Loadlog(context.Context, worker.StepEvent) error {
	time.Sleep(s.each)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stored++
	return nil
}
func (s *slowSink) n() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stored
}
