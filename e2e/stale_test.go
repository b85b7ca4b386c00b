package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/worker"
)

// holdSlot puts a foreign lease on the slot (as `nats kv put vclq_slots computer.N`
// would) and returns the function that removes it.
func (s *site) holdSlot(t *testing.T, sl *devlab.Slot) (free func()) {
	t.Helper()
	kv := s.slotsKV(t)
	key := messages.SlotLeaseKey(sl.Computer.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := kv.Put(ctx, key, []byte(`{"worker":"operator"}`)); err != nil {
		t.Fatal(err)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := kv.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
}

func (s *site) slotsKV(t *testing.T) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := s.js.JS.KeyValue(ctx, messages.BucketSlotLeases)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// slotRecord reads the slot's served record (the newest request it started and its
// waiting list).
func (s *site) slotRecord(t *testing.T, sl *devlab.Slot) worker.SlotRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var rec worker.SlotRecord
	e, err := s.slotsKV(t).Get(ctx, worker.SlotServedKey(sl.Computer.ID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rec
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// waitQueued waits until the request published as seq is listed as waiting for sl.
func (s *site) waitQueued(t *testing.T, sl *devlab.Slot, seq uint64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		for _, w := range s.slotRecord(t, sl).Waiting {
			if w.Seq == seq {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("request seq %d never waited for %s: %+v", seq, sl.Computer.ShortName, s.slotRecord(t, sl))
}

// loadlogOf lists the loadlog events of one request.
func (s *site) loadlogOf(t *testing.T, reservation int64, seq uint64) []*messages.Loadlog {
	t.Helper()
	var out []*messages.Loadlog
	s.each(t, reservation, func(l *messages.Loadlog) {
		if l.RequestSeq == seq {
			out = append(out, l)
		}
	})
	return out
}

// waitStale waits for the info event a stale delivery of request seq leaves.
func (s *site) waitStale(t *testing.T, reservation int64, seq uint64, worker string) *messages.Loadlog {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range s.loadlogOf(t, reservation, seq) {
			if l.Phase == messages.PhaseInfo && l.Worker == worker && strings.HasPrefix(l.Info, "stale delivery") {
				return l
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("no stale-delivery event of %s for request seq %d\n%s", worker, seq, s.dump(reservation))
	return nil
}

// slotCarries checks, through govmomi, that the slot has exactly one VM, of image im.
func (s *site) slotCarries(t *testing.T, sl *devlab.Slot, im devlab.ImageSpec) {
	t.Helper()
	vms := slotVMs(t, sl)
	if len(vms) != 1 || vms[0].Extra["vcl.image_id"] != strconv.FormatInt(im.ID, 10) {
		t.Errorf("slot %s VMs %+v, want one of image %d", sl.Computer.ShortName, vms, im.ID)
	}
}

func signal(t *testing.T, p *exec.Cmd, sig syscall.Signal) {
	t.Helper()
	if err := p.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// The paused-node scenario of issue 9: a request waits in place on node 1 for its held
// slot; node 1 is frozen; node 2 serves the request and then a newer one with another
// image; node 1 resumes. Its stale delivery must touch nothing: the slot keeps the
// newest image, each request loads once, and the stale delivery leaves an info event.
func TestPausedNodeDoesNotRerunFinishedWork(t *testing.T) {
	s := startSite(t, 1, 2)
	slot, imgA, imgB := s.lab.Slots[0], s.lab.Images[0], s.lab.Images[1]
	free := s.holdSlot(t, slot)
	n1 := s.startWorkerProcess(t, "node1")
	r1 := s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindNew, Slot: slot, Image: imgA, Reservation: 7101, Request: 8101}))
	s.waitQueued(t, slot, r1)
	signal(t, n1, syscall.SIGSTOP)
	t.Cleanup(func() { _ = n1.Process.Signal(syscall.SIGCONT) })
	s.startWorkerProcess(t, "node2")
	free()

	// Node 2 gets R1 once its delivery to the frozen node 1 runs out (AckWait).
	res1 := s.result(t, 7101, r1, 2*flowWait)
	if res1.Outcome != messages.OutcomeSuccess || res1.Worker != "node2" {
		t.Fatalf("R1: %+v\n%s", res1, s.dump(7101))
	}
	r2 := s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindReload, Slot: slot, Image: imgB, Reservation: 7102, Request: 8102}))
	if res2 := s.result(t, 7102, r2, flowWait); res2.Outcome != messages.OutcomeSuccess {
		t.Fatalf("R2: %+v\n%s", res2, s.dump(7102))
	}

	signal(t, n1, syscall.SIGCONT)
	stale := s.waitStale(t, 7101, r1, "node1")
	t.Logf("node 1 after the pause: %s", stale.Info)
	// Give node 1 time to do anything it still might.
	time.Sleep(3 * time.Second)

	s.slotCarries(t, slot, imgB)
	if cur, err := inGuest(t, slot, "cat", "/root/currentimage.txt"); err != nil || !strings.HasPrefix(cur, imgB.Name+"\n") {
		t.Errorf("guest runs %q (%v), want %s", cur, err, imgB.Name)
	}
	for _, c := range []struct {
		reservation int64
		seq         uint64
	}{{7101, r1}, {7102, r2}} {
		loads := 0
		for _, l := range s.loadlogOf(t, c.reservation, c.seq) {
			if l.Name == messages.LoadStartLoad && l.Phase == messages.PhaseBegin {
				loads++
			}
			if l.Worker == "node1" && !(l.Phase == messages.PhaseInfo && strings.HasPrefix(l.Info, "stale delivery")) {
				t.Errorf("node 1 published %s %s for seq %d after its pause", l.Name, l.Phase, c.seq)
			}
		}
		results := s.countResults(t, c.reservation, c.seq)
		t.Logf("reservation %d seq %d: %d loads, %d results", c.reservation, c.seq, loads, results)
		if loads != 1 || results != 1 {
			t.Errorf("reservation %d: %d loads and %d results, want 1 and 1", c.reservation, loads, results)
		}
	}
}

// Requests that wait together for a held slot run in stream order when it frees; one
// that a newer request overtook (its node was frozen while the newer one was served)
// ends with its own failed result, code superseded, and never loads after the newer.
func TestQueuedRequestsRunInStreamOrder(t *testing.T) {
	s := startSite(t, 1, 2)
	slot, imgA, imgB := s.lab.Slots[1], s.lab.Images[0], s.lab.Images[1]

	t.Run("in order", func(t *testing.T) {
		free := s.holdSlot(t, slot)
		s.startWorkerProcess(t, "order1")
		s.startWorkerProcess(t, "order2")
		older := s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindNew, Slot: slot, Image: imgA, Reservation: 7201, Request: 8201}))
		newer := s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindReload, Slot: slot, Image: imgB, Reservation: 7202, Request: 8202}))
		s.waitQueued(t, slot, older)
		s.waitQueued(t, slot, newer)
		free()
		a, b := s.result(t, 7201, older, flowWait), s.result(t, 7202, newer, flowWait)
		if a.Outcome != messages.OutcomeSuccess || b.Outcome != messages.OutcomeSuccess {
			t.Fatalf("results %+v %+v", a, b)
		}
		newerBegan := s.loadlogOf(t, 7202, newer)[0].Time
		t.Logf("older finished %s, newer began %s", a.Time.Format(time.StampMilli), newerBegan.Format(time.StampMilli))
		if !a.Time.Before(newerBegan) {
			t.Errorf("the newer request began (%s) before the older one's result (%s)", newerBegan, a.Time)
		}
		s.slotCarries(t, slot, imgB)
	})

	t.Run("overtaken", func(t *testing.T) {
		free := s.holdSlot(t, slot)
		frozen := s.startWorkerProcess(t, "frozen")
		older := s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindReload, Slot: slot, Image: imgA, Reservation: 7203, Request: 8203}))
		s.waitQueued(t, slot, older)
		signal(t, frozen, syscall.SIGSTOP)
		t.Cleanup(func() { _ = frozen.Process.Signal(syscall.SIGCONT) })
		// Let the frozen node's open pull request expire (poll wait 2 s): the newer
		// request must go to the live node.
		time.Sleep(3 * time.Second)
		s.startWorkerProcess(t, "live")
		newer := s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindReload, Slot: slot, Image: imgB, Reservation: 7204, Request: 8204}))
		free()
		// The frozen node's waiting entry lapses: the newer request is served; the
		// older one comes back to the live node after AckWait and finds it overtaken.
		b := s.result(t, 7204, newer, flowWait)
		a := s.result(t, 7203, older, 2*flowWait)
		t.Logf("newer: %s %s by %s; older: %s %s %q by %s", b.Outcome, b.ErrorCode, b.Worker, a.Outcome, a.ErrorCode, a.Error, a.Worker)
		if b.Outcome != messages.OutcomeSuccess {
			t.Fatalf("newer: %+v", b)
		}
		if a.Outcome != messages.OutcomeFailed || a.ErrorCode != worker.CodeSuperseded || a.ComputerState != "" || a.RequestState != messages.StateFailed {
			t.Errorf("older: %+v, want failed/superseded leaving the computer alone", a)
		}
		signal(t, frozen, syscall.SIGCONT)
		s.waitStale(t, 7203, older, "frozen")
		time.Sleep(3 * time.Second)
		for _, l := range s.loadlogOf(t, 7203, older) {
			if l.Phase != messages.PhaseInfo || !strings.HasPrefix(l.Info, "stale delivery") {
				t.Errorf("the overtaken request did something: %s %s by %s", l.Name, l.Phase, l.Worker)
			}
		}
		if n := s.countResults(t, 7203, older); n != 1 {
			t.Errorf("%d results for the overtaken request", n)
		}
		s.slotCarries(t, slot, imgB)
	})
}
