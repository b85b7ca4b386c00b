package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/publisher"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// Many requests on few slots, two pools: every request completes once, with events,
// and the journal never sees two handlers on one slot.
func TestPoolsCompleteEveryRequestOnceWithoutSlotOverlap(t *testing.T) {
	j := startJS(t, streams.Options{})
	journal := filepath.Join(t.TempDir(), "journal")
	h := sim(t, "work=5ms..25ms,journal="+journal)
	startPool(t, j, h, worker.Config{ID: "a", Concurrency: 4})
	startPool(t, j, h, worker.Config{ID: "b", Concurrency: 4})
	const n, computers = 60, 3
	for i := range n {
		publish(t, j, simhandler.Request(messages.KindNew, int64(1000+i), int64(1+i%computers)))
	}
	got := waitResults(t, j, n, 60*time.Second)
	// Twenty reservations on one computer at once is no real site's pattern: two
	// requests that arrive at the same moment race for the slot, and the older one
	// may find it already serving the newer: it then ends superseded, having done
	// nothing (never out of order).
	succeeded, superseded := 0, map[int64]bool{}
	for seq, rs := range got {
		switch {
		case len(rs) != 1:
			t.Errorf("seq %d: %d results", seq, len(rs))
		case rs[0].Outcome == messages.OutcomeSuccess && rs[0].RequestState == messages.StateReserved:
			succeeded++
		case rs[0].Outcome == messages.OutcomeFailed && rs[0].ErrorCode == worker.CodeSuperseded && rs[0].ComputerState == "":
			superseded[rs[0].ReservationID] = true
		default:
			t.Errorf("seq %d: result %+v", seq, rs[0])
		}
	}
	t.Logf("%d requests: %d succeeded, %d superseded", n, succeeded, len(superseded))
	if len(got) != n {
		t.Errorf("%d distinct results, want %d", len(got), n)
	}
	if len(superseded) > n/10 {
		t.Errorf("%d of %d requests superseded", len(superseded), n)
	}
	rep, err := simhandler.ReadJournal(journal)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Overlaps) > 0 {
		t.Errorf("overlaps: %v", rep.Overlaps)
	}
	if rep.Ends["ok"] != succeeded || rep.Begins != succeeded {
		t.Errorf("journal: %d begins, %d ok ends, want %d (%+v)", rep.Begins, rep.Ends["ok"], succeeded, rep)
	}
	for r := range superseded {
		if rep.OKByReservation[r] != 0 {
			t.Errorf("superseded reservation %d ran", r)
		}
	}
	// The simulated notice, loadlog begin and end for every request that ran, an
	// info event for each superseded one, no duplicates.
	if c := countSubject(t, j, messages.StreamEvents, messages.SubjectLoadlogPrefix+">"); c != 3*succeeded+len(superseded) {
		t.Errorf("%d loadlog events, want %d", c, 3*succeeded+len(superseded))
	}
	if left := requestsLeft(t, j); left != 0 {
		t.Errorf("%d requests left in the queue", left)
	}
}

// A job longer than the lease TTL keeps its lease by renewing it (per-key TTL kept),
// and a second request for the same slot waits for it.
func TestLeaseRenewalKeepsLongJobAlive(t *testing.T) {
	j := startJS(t, streams.Options{})
	var running atomic.Int32
	var overlap atomic.Bool
	h := newProbe(func(ctx context.Context, job *worker.Job) (messages.Result, error) {
		if running.Add(1) > 1 {
			overlap.Store(true)
		}
		defer running.Add(-1)
		if err := sleepCtx(ctx, 6*time.Second); err != nil {
			return messages.Result{}, err
		}
		return ok(job), nil
	})
	// A 3s TTL renewed every second leaves 2s of slack for a loaded machine's stalls.
	startPool(t, j, h, worker.Config{Concurrency: 2, LeaseTTL: 3 * time.Second})
	publish(t, j, simhandler.Request(messages.KindNew, 1, 7))
	first := h.next(t, 5*time.Second)
	publish(t, j, simhandler.Request(messages.KindReclaim, 2, 7))
	kv := slotsKV(t, j)
	// Well past the TTL, the first job's lease is still there (renewed, not expired).
	time.Sleep(4500 * time.Millisecond)
	e, err := kv.Get(context.Background(), messages.SlotLeaseKey(7))
	if err != nil {
		t.Fatalf("lease gone after 4.5s with TTL 3s: %v", err)
	}
	if e.Revision() <= first.Fence {
		t.Errorf("lease revision %d not renewed (fence %d)", e.Revision(), first.Fence)
	}
	var lv worker.LeaseValue
	if err := json.Unmarshal(e.Value(), &lv); err != nil || lv.Reservation != 1 {
		t.Errorf("lease value %s (%v), want reservation 1", e.Value(), err)
	}
	got := waitResults(t, j, 2, 20*time.Second)
	for seq, rs := range got {
		if len(rs) != 1 || rs[0].Outcome != messages.OutcomeSuccess || rs[0].Deliveries != 1 {
			t.Errorf("seq %d: %+v", seq, rs[0])
		}
	}
	if overlap.Load() {
		t.Error("two jobs ran on one slot at once")
	}
	second := h.next(t, time.Second)
	if second.Fence <= first.Fence {
		t.Errorf("second fence %d not above first %d", second.Fence, first.Fence)
	}
	// Released on finish: the key is gone.
	testutil.WaitFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		if _, err := kv.Get(context.Background(), messages.SlotLeaseKey(7)); !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("lease still there: %v", err)
		}
		return nil
	})
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-time.After(d):
		return nil
	}
}

// Losing the lease behind the job's back cancels it with ErrLeaseLost, and the job
// never touches the slot again (the new holder's key stays).
func TestLeaseLossCancelsJob(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steal func(kv jetstream.KeyValue, key string) error
	}{
		{"deleted", func(kv jetstream.KeyValue, key string) error {
			return kv.Delete(context.Background(), key)
		}},
		{"revision bumped", func(kv jetstream.KeyValue, key string) error {
			_, err := kv.Put(context.Background(), key, []byte(`{"worker":"thief"}`))
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := startJS(t, streams.Options{MaxDeliver: 1})
			causes := make(chan error, 1)
			h := newProbe(hangUntilDone(causes))
			startPool(t, j, h, worker.Config{Concurrency: 1, LeaseTTL: time.Second})
			publish(t, j, simhandler.Request(messages.KindNew, 1, 9))
			h.next(t, 5*time.Second)
			kv := slotsKV(t, j)
			key := messages.SlotLeaseKey(9)
			if err := tc.steal(kv, key); err != nil {
				t.Fatal(err)
			}
			after, _ := kv.Get(context.Background(), key)
			waitCause(t, causes, worker.ErrLeaseLost, 3*time.Second)
			// The fenced-out job publishes nothing (another node may own the slot and
			// the request's result); its message goes back, and past its last
			// delivery the sweeper dead-letters it with the one failed result.
			got := waitResults(t, j, 1, 10*time.Second)
			for _, rs := range got {
				if len(rs) != 1 || rs[0].Outcome != messages.OutcomeFailed || rs[0].ErrorCode != worker.CodeMaxDeliver || rs[0].Worker == "" {
					t.Errorf("results %+v, want one failed max_deliveries from the sweeper", rs)
				}
			}
			// The job left the slot's key as the thief left it.
			e, err := kv.Get(context.Background(), key)
			switch {
			case after == nil && !errors.Is(err, jetstream.ErrKeyNotFound):
				t.Errorf("deleted key came back: %v %v", e, err)
			case after != nil && (err != nil || e.Revision() != after.Revision()):
				t.Errorf("thief's key changed: %v %v", e, err)
			}
		})
	}
}

// A busy slot makes the job wait in place (InProgress) without burning deliveries,
// and it starts as soon as the slot is free.
func TestBusySlotWaitsWithoutBurningDeliveries(t *testing.T) {
	j := startJS(t, streams.Options{AckWait: time.Second, MaxDeliver: 2})
	kv := slotsKV(t, j)
	key := messages.SlotLeaseKey(4)
	if _, err := kv.Create(context.Background(), key, []byte(`{"worker":"other"}`), jetstream.KeyTTL(time.Minute)); err != nil {
		t.Fatal(err)
	}
	h := newProbe(func(ctx context.Context, job *worker.Job) (messages.Result, error) { return ok(job), nil })
	p, _ := startPool(t, j, h, worker.Config{Concurrency: 1, BusySlotWait: time.Minute})
	publish(t, j, simhandler.Request(messages.KindNew, 1, 4))
	testutil.WaitFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if r := p.Registration(); len(r.Active) != 1 || r.Active[0].State != worker.JobWaiting {
			return fmt.Errorf("active %+v", r.Active)
		}
		return nil
	})
	time.Sleep(3500 * time.Millisecond) // > 3 AckWaits
	select {
	case <-h.started:
		t.Fatal("handler started while the slot was busy")
	default:
	}
	if ci := consumerInfo(t, j); ci.NumRedelivered != 0 || ci.NumAckPending != 1 {
		t.Errorf("consumer: redelivered %d, ack pending %d; want 0, 1", ci.NumRedelivered, ci.NumAckPending)
	}
	if err := kv.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	got := waitResults(t, j, 1, 10*time.Second)
	for _, rs := range got {
		if rs[0].Outcome != messages.OutcomeSuccess || rs[0].Deliveries != 1 {
			t.Errorf("result %+v, want success on delivery 1", rs[0])
		}
	}
}

// InProgress keeps a job past several AckWaits without a redelivery.
func TestInProgressKeepsJobPastAckWait(t *testing.T) {
	j := startJS(t, streams.Options{AckWait: time.Second})
	journal := filepath.Join(t.TempDir(), "journal")
	startPool(t, j, sim(t, "work=3500ms,journal="+journal), worker.Config{ID: "a", Concurrency: 2})
	startPool(t, j, sim(t, "work=3500ms,journal="+journal), worker.Config{ID: "b", Concurrency: 2})
	publish(t, j, simhandler.Request(messages.KindNew, 1, 1))
	got := waitResults(t, j, 1, 15*time.Second)
	for _, rs := range got {
		if rs[0].Deliveries != 1 || rs[0].Outcome != messages.OutcomeSuccess {
			t.Errorf("result %+v", rs[0])
		}
	}
	rep, _ := simhandler.ReadJournal(journal)
	if rep.Begins != 1 {
		t.Errorf("handler ran %d times, want 1", rep.Begins)
	}
	if ci := consumerInfo(t, j); ci.NumRedelivered != 0 {
		t.Errorf("%d redelivered", ci.NumRedelivered)
	}
}

// Shutdown: in-flight jobs get the grace period, then are cancelled with ErrShutdown
// and handed back; another pool completes them.
func TestShutdownHandsBackUnfinishedJobs(t *testing.T) {
	j := startJS(t, streams.Options{})
	causes := make(chan error, 10)
	a := newProbe(hangUntilDone(causes))
	_, stopA := startPool(t, j, a, worker.Config{ID: "a", Concurrency: 3, ShutdownGrace: 300 * time.Millisecond})
	for i := range 3 {
		publish(t, j, simhandler.Request(messages.KindNew, int64(10+i), int64(1+i)))
	}
	for range 3 {
		a.next(t, 5*time.Second)
	}
	stopA()
	for range 3 {
		waitCause(t, causes, worker.ErrShutdown, time.Second)
	}
	if n := countSubject(t, j, messages.StreamEvents, messages.SubjectResultPrefix+">"); n != 0 {
		t.Fatalf("%d results published on shutdown", n)
	}
	b := newProbe(func(ctx context.Context, job *worker.Job) (messages.Result, error) { return ok(job), nil })
	startPool(t, j, b, worker.Config{ID: "b", Concurrency: 3})
	got := waitResults(t, j, 3, 10*time.Second)
	for _, rs := range got {
		if rs[0].Outcome != messages.OutcomeSuccess || rs[0].Worker != "b" || rs[0].Deliveries != 2 {
			t.Errorf("result %+v, want success by b on delivery 2", rs[0])
		}
	}
	// The registry entry of a was removed on stop.
	kv, _ := j.JS.KeyValue(context.Background(), messages.BucketWorkers)
	if _, err := kv.Get(context.Background(), worker.RegistryKey("a")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("registry entry of a after stop: %v", err)
	}
}

// A reclaim cancels the reservation's earlier job on another worker (ErrCancelled;
// failed result with code cancelled, acked), then runs once the slot is free.
func TestReclaimCancelsEarlierJobAcrossWorkers(t *testing.T) {
	j := startJS(t, streams.Options{})
	causes := make(chan error, 1)
	var rolledBack atomic.Bool
	a := newProbe(func(ctx context.Context, job *worker.Job) (messages.Result, error) {
		<-ctx.Done()
		causes <- context.Cause(ctx)
		if errors.Is(context.Cause(ctx), worker.ErrCancelled) {
			rolledBack.Store(true) // a flow rolls back here
		}
		return messages.Result{}, context.Cause(ctx)
	})
	startPool(t, j, a, worker.Config{ID: "a", Concurrency: 1})
	newSeq := publish(t, j, simhandler.Request(messages.KindNew, 77, 5))
	a.next(t, 5*time.Second)
	b := newProbe(func(ctx context.Context, job *worker.Job) (messages.Result, error) { return ok(job), nil })
	startPool(t, j, b, worker.Config{ID: "b", Concurrency: 1})
	reclaimSeq := publish(t, j, simhandler.Request(messages.KindReclaim, 77, 5))
	waitCause(t, causes, worker.ErrCancelled, 5*time.Second)
	got := waitResults(t, j, 2, 10*time.Second)
	if r := got[newSeq]; len(r) != 1 || r[0].Outcome != messages.OutcomeFailed || r[0].ErrorCode != worker.CodeCancelled {
		t.Errorf("new: %+v, want failed/cancelled", r)
	}
	if r := got[reclaimSeq]; len(r) != 1 || r[0].Outcome != messages.OutcomeSuccess || r[0].Worker != "b" {
		t.Errorf("reclaim: %+v, want success by b", r)
	}
	if !rolledBack.Load() {
		t.Error("cancelled job did not see ErrCancelled")
	}
	if left := requestsLeft(t, j); left != 0 {
		t.Errorf("%d requests left (the cancelled one must be acked)", left)
	}
}

// No prefetch: with one job slot busy, exactly one message is pending an ack.
func TestNoPrefetch(t *testing.T) {
	j := startJS(t, streams.Options{})
	causes := make(chan error, 10)
	h := newProbe(hangUntilDone(causes))
	startPool(t, j, h, worker.Config{Concurrency: 1})
	for i := range 5 {
		publish(t, j, simhandler.Request(messages.KindNew, int64(1+i), int64(1+i)))
	}
	h.next(t, 5*time.Second)
	for range 5 {
		ci := consumerInfo(t, j)
		if ci.NumAckPending != 1 || ci.NumPending != 4 {
			t.Fatalf("ack pending %d, pending %d; want 1, 4", ci.NumAckPending, ci.NumPending)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Invalid messages: rejected result with the reason, dead letter with full headers,
// terminated at once; the worker keeps serving.
func TestInvalidMessagesAreRejectedAndDeadLettered(t *testing.T) {
	j := startJS(t, streams.Options{})
	h := sim(t, "events=false")
	startPool(t, j, h, worker.Config{Concurrency: 2})
	good := simhandler.Request(messages.KindNew, 500, 1)
	goodJSON, _ := json.Marshal(good)
	hostile := simhandler.Request(messages.KindNew, 501, 2)
	hostile.Computer.Hostname = "a;rm -rf /"
	hostileJSON, _ := json.Marshal(hostile)
	schema2 := strings.Replace(string(goodJSON), `"schema":1`, `"schema":2`, 1)
	oversize := strings.Replace(string(goodJSON), `"management_node_ip"`, `"x"`, 1)
	oversize = `{"pad":"` + strings.Repeat("x", messages.MaxMessageSize) + `",` + oversize[1:]
	cases := []struct {
		name, data, reason string
		reservation        int64
	}{
		{"malformed JSON", `{"schema":1,"kind":"new",`, "JSON", 0},
		{"oversize", oversize, "too large", 0},
		{"unknown schema", schema2, "schema", 500},
		{"hostile hostname", string(hostileJSON), "hostname", 501},
	}
	seqs := map[uint64]int{}
	for i, c := range cases {
		seqs[publishRaw(t, j, "vcl.new", []byte(c.data), "bad-"+strconv.Itoa(i))] = i
	}
	goodSeq := publish(t, j, simhandler.Request(messages.KindNew, 502, 3))
	got := waitResults(t, j, len(cases)+1, 10*time.Second)
	if r := got[goodSeq]; len(r) != 1 || r[0].Outcome != messages.OutcomeSuccess {
		t.Errorf("good request after the bad ones: %+v", r)
	}
	dlq := readAll(t, j, messages.StreamDeadLetters, messages.SubjectDeadLetterAll)
	dlqBySeq := map[string]jetstream.Msg{}
	for _, m := range dlq {
		dlqBySeq[m.Headers().Get(messages.HeaderOrigSequence)] = m
	}
	for seq, i := range seqs {
		c := cases[i]
		t.Run(c.name, func(t *testing.T) {
			rs := got[seq]
			if len(rs) != 1 || rs[0].Outcome != messages.OutcomeRejected || rs[0].ErrorCode != worker.CodeInvalid ||
				!strings.Contains(rs[0].Error, c.reason) || rs[0].ReservationID != c.reservation || rs[0].Deliveries != 1 {
				t.Fatalf("result %+v, want rejected mentioning %q for reservation %d", rs, c.reason, c.reservation)
			}
			// The contract (docs/messages.md): the request fails in VCL when its
			// reservation is known; the computer is never touched.
			wantReq := ""
			if c.reservation > 0 {
				wantReq = messages.StateFailed
			}
			if rs[0].RequestState != wantReq || rs[0].ComputerState != "" {
				t.Errorf("states %q/%q, want %q/\"\"", rs[0].RequestState, rs[0].ComputerState, wantReq)
			}
			m, ok := dlqBySeq[strconv.FormatUint(seq, 10)]
			if !ok {
				t.Fatalf("no dead letter for seq %d", seq)
			}
			h := m.Headers()
			if string(m.Data()) != c.data {
				t.Error("dead letter payload differs from the original")
			}
			if !strings.Contains(h.Get(messages.HeaderReason), c.reason) || h.Get(messages.HeaderOrigSubject) != "vcl.new" ||
				h.Get(messages.HeaderDeliveries) != "1" || h.Get(messages.HeaderDeadLetterAt) == "" || h.Get(messages.HeaderWorker) == "" {
				t.Errorf("dead letter headers %v", h)
			}
			if h.Get(messages.HeaderMsgID) != publisher.DeadLetterMsgID(seq) {
				t.Errorf("dead letter msg id %q", h.Get(messages.HeaderMsgID))
			}
			if want := messages.DeadLetterSubject(hintKind(c.reservation), c.reservation); m.Subject() != want {
				t.Errorf("dead letter subject %s, want %s", m.Subject(), want)
			}
		})
	}
	if left := requestsLeft(t, j); left != 0 {
		t.Errorf("%d requests left (rejected ones must be terminated)", left)
	}
}

func hintKind(reservation int64) messages.Kind {
	if reservation == 0 {
		return ""
	}
	return messages.KindNew
}

// A handler that always fails: after MaxDeliver deliveries a dead letter and a failed
// result; a permanent failure fails at once, and is dead-lettered too (so that
// `vclq dlq replay` can re-drive it once its cause is fixed).
func TestFailuresAfterDeliveryBudgetAndPermanent(t *testing.T) {
	j := startJS(t, streams.Options{MaxDeliver: 3})
	h := sim(t, "events=false,fail=reservations:1,permfail=reservations:2")
	startPool(t, j, h, worker.Config{Concurrency: 2})
	retried := publish(t, j, simhandler.Request(messages.KindNew, 1, 1))
	permanent := publish(t, j, simhandler.Request(messages.KindImage, 2, 2))
	got := waitResults(t, j, 2, 15*time.Second)
	if r := got[retried]; len(r) != 1 || r[0].Outcome != messages.OutcomeFailed || r[0].Deliveries != 3 ||
		r[0].ErrorCode != worker.CodeMaxDeliver || r[0].RequestState != messages.StateFailed {
		t.Errorf("always failing: %+v, want failed after 3 deliveries", r)
	}
	if r := got[permanent]; len(r) != 1 || r[0].Outcome != messages.OutcomeFailed || r[0].Deliveries != 1 ||
		r[0].RequestState != messages.StateMaintenance || r[0].ComputerState != messages.StateMaintenance {
		t.Errorf("permanent (image): %+v, want failed/maintenance on delivery 1", r)
	}
	dlq := readAll(t, j, messages.StreamDeadLetters, messages.SubjectDeadLetterAll)
	if len(dlq) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dlq))
	}
	bySeq := map[string]jetstream.Msg{}
	for _, m := range dlq {
		bySeq[m.Headers().Get(messages.HeaderOrigSequence)] = m
	}
	for _, tc := range []struct {
		seq         uint64
		kind        messages.Kind
		reservation int64
		deliveries  string
		reason      string
	}{
		{retried, messages.KindNew, 1, "3", "delivery budget"},
		{permanent, messages.KindImage, 2, "1", "permanent failure"},
	} {
		m, ok := bySeq[strconv.FormatUint(tc.seq, 10)]
		if !ok {
			t.Errorf("no dead letter for request seq %d", tc.seq)
			continue
		}
		hd := m.Headers()
		t.Logf("dead letter of seq %d: %s", tc.seq, hd.Get(messages.HeaderReason))
		if m.Subject() != messages.DeadLetterSubject(tc.kind, tc.reservation) ||
			hd.Get(messages.HeaderDeliveries) != tc.deliveries || hd.Get(messages.HeaderReservation) != strconv.FormatInt(tc.reservation, 10) ||
			!strings.Contains(hd.Get(messages.HeaderReason), tc.reason) {
			t.Errorf("dead letter %s %v", m.Subject(), hd)
		}
	}
	if left := requestsLeft(t, j); left != 0 {
		t.Errorf("%d requests left", left)
	}
}

// The sweeper moves a request whose last delivery expired with a crashed worker.
func TestSweeperMovesAbandonedLastDelivery(t *testing.T) {
	j := startJS(t, streams.Options{AckWait: time.Second, MaxDeliver: 1})
	seq := publish(t, j, simhandler.Request(messages.KindNew, 42, 3))
	// A "worker" takes the only delivery and dies with it.
	ctx := context.Background()
	c, err := j.JS.Consumer(ctx, messages.StreamRequests, messages.ConsumerWorkers)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range b.Messages() {
	}
	startPool(t, j, sim(t, ""), worker.Config{Concurrency: 1})
	got := waitResults(t, j, 1, 15*time.Second)
	if r := got[seq]; len(r) != 1 || r[0].Outcome != messages.OutcomeFailed || r[0].ErrorCode != worker.CodeMaxDeliver || r[0].ReservationID != 42 {
		t.Errorf("result %+v", r)
	}
	testutil.WaitFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		if n := requestsLeft(t, j); n != 0 {
			return fmt.Errorf("%d requests left", n)
		}
		return nil
	})
	dlq := readAll(t, j, messages.StreamDeadLetters, messages.SubjectDeadLetterAll)
	if len(dlq) != 1 || dlq[0].Headers().Get(messages.HeaderOrigSequence) != strconv.FormatUint(seq, 10) {
		t.Fatalf("dead letters %d", len(dlq))
	}
}

// The registry shows the worker and its active jobs.
func TestRegistryHeartbeat(t *testing.T) {
	j := startJS(t, streams.Options{})
	causes := make(chan error, 1)
	h := newProbe(hangUntilDone(causes))
	startPool(t, j, h, worker.Config{ID: "mn1.example.edu:7", Concurrency: 2, Version: "v-test"})
	publish(t, j, simhandler.Request(messages.KindReload, 3, 8))
	h.next(t, 5*time.Second)
	kv, _ := j.JS.KeyValue(context.Background(), messages.BucketWorkers)
	testutil.WaitFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		e, err := kv.Get(context.Background(), worker.RegistryKey("mn1.example.edu:7"))
		if err != nil {
			return err
		}
		var r worker.Registration
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return err
		}
		if r.ID != "mn1.example.edu:7" || r.Concurrency != 2 || r.Version != "v-test" || r.PID == 0 || len(r.Active) != 1 ||
			r.Active[0].Reservation != 3 || r.Active[0].Computer != 8 || r.Active[0].Kind != messages.KindReload || r.Active[0].State != worker.JobRunning {
			return fmt.Errorf("registration %+v", r)
		}
		return nil
	})
}

func TestConfigValidation(t *testing.T) {
	j := startJS(t, streams.Options{})
	h := sim(t, "")
	for _, tc := range []struct {
		name string
		cfg  worker.Config
	}{
		{"lease TTL below 1s", worker.Config{LeaseTTL: 500 * time.Millisecond}},
		{"bad worker id", worker.Config{ID: "a b"}},
		{"negative concurrency", worker.Config{Concurrency: -1}},
		{"negative grace", worker.Config{ShutdownGrace: -time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := worker.New(j.JS, j.NC, h, tc.cfg, testLogger(t)); !errors.Is(err, worker.ErrConfig) {
				t.Errorf("err %v, want ErrConfig", err)
			}
		})
	}
	t.Run("max deliver differs from the consumer", func(t *testing.T) {
		p, err := worker.New(j.JS, j.NC, h, worker.Config{MaxDeliver: 9}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Run(ctx); !errors.Is(err, worker.ErrConfig) {
			t.Errorf("Run: %v, want ErrConfig", err)
		}
	})
}

// A handler that returns an invalid result (a state VCL does not know) gets a failed
// result with code invalid_result instead, once, and its request is terminated.
func TestInvalidHandlerResult(t *testing.T) {
	j := startJS(t, streams.Options{})
	h := newProbe(func(ctx context.Context, job *worker.Job) (messages.Result, error) {
		return messages.Result{RequestState: "happy", ComputerState: messages.StateAvailable}, nil
	})
	startPool(t, j, h, worker.Config{Concurrency: 1})
	seq := publish(t, j, simhandler.Request(messages.KindReload, 3, 3))
	got := waitResults(t, j, 1, 10*time.Second)
	if r := got[seq]; len(r) != 1 || r[0].Outcome != messages.OutcomeFailed || r[0].ErrorCode != worker.CodeBadResult || r[0].Deliveries != 1 {
		t.Errorf("result %+v", r)
	}
	testutil.WaitFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		if n := requestsLeft(t, j); n != 0 {
			return fmt.Errorf("%d requests left", n)
		}
		return nil
	})
}

// A renewal the server stored but whose reply was lost leaves the worker with a stale
// revision; the key still holds the job's own value, so the job keeps its slot.
func TestLostRenewalReplyKeepsTheLease(t *testing.T) {
	j := startJS(t, streams.Options{})
	h := newProbe(func(ctx context.Context, job *worker.Job) (messages.Result, error) {
		if err := sleepCtx(ctx, 4*time.Second); err != nil {
			return messages.Result{}, err
		}
		return ok(job), nil
	})
	startPool(t, j, h, worker.Config{Concurrency: 1, LeaseTTL: 3 * time.Second})
	publish(t, j, simhandler.Request(messages.KindNew, 1, 11))
	first := h.next(t, 5*time.Second)
	kv := slotsKV(t, j)
	key := messages.SlotLeaseKey(11)
	e, err := kv.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	// What a stored renewal looks like to the worker that missed its reply: the same
	// value at a newer revision.
	if _, err := kv.Put(context.Background(), key, e.Value()); err != nil {
		t.Fatal(err)
	}
	got := waitResults(t, j, 1, 20*time.Second)
	for _, rs := range got {
		if len(rs) != 1 || rs[0].Outcome != messages.OutcomeSuccess {
			t.Fatalf("result %+v, want one success (the lease was ours all along)", rs)
		}
	}
	if first.Fence == 0 {
		t.Fatal("no fence")
	}
}
