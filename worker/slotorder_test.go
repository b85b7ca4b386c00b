package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// handBack takes the next delivery from the workers' consumer and Naks it, as a node
// that fetched it and died would leave it (its next delivery is the second).
func handBack(t *testing.T, j *testutil.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := j.JS.Consumer(ctx, messages.StreamRequests, messages.ConsumerWorkers)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Fetch(1, jetstream.FetchMaxWait(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	m, ok := <-b.Messages()
	if !ok {
		t.Fatal("no delivery to hand back")
	}
	if err := m.Nak(); err != nil {
		t.Fatal(err)
	}
}

// staleInfo returns the info events of stale deliveries.
func staleInfo(t *testing.T, j *testutil.JetStream) []string {
	t.Helper()
	var out []string
	for _, m := range readAll(t, j, messages.StreamEvents, messages.SubjectLoadlogPrefix+">") {
		l, err := messages.DecodeLoadlog(m.Data())
		if err == nil && l.Phase == messages.PhaseInfo && strings.HasPrefix(l.Info, "stale delivery") {
			out = append(out, l.Info)
		}
	}
	return out
}

// A redelivery of a request that already has a result (its acks were lost, its node
// paused) touches nothing: the handler never runs, no second result, an info event.
func TestRedeliveryOfAFinishedRequestDoesNothing(t *testing.T) {
	j := startJS(t, streams.Options{})
	req := simhandler.Request(messages.KindNew, 31, 7)
	seq := publish(t, j, req)
	// An earlier delivery stored the result, then its node vanished before the ack.
	done := &messages.Result{Schema: 1, ReservationID: 31, RequestID: req.Request.ID, ComputerID: 7, Kind: messages.KindNew,
		Outcome: messages.OutcomeSuccess, RequestState: messages.StateReserved, ComputerState: messages.StateReserved,
		Worker: "gone", Time: time.Now().UTC(), Deliveries: 1, RequestSeq: seq}
	data, _ := json.Marshal(done)
	publishRaw(t, j, messages.ResultSubject(31), data, done.MsgID())
	handBack(t, j)

	h := newProbe(func(ctx context.Context, job *worker.Job) (messages.Result, error) { return ok(job), nil })
	startPool(t, j, h, worker.Config{ID: "late", Concurrency: 1})
	testutil.WaitFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if left := requestsLeft(t, j); left != 0 {
			return fmt.Errorf("%d requests left", left)
		}
		return nil
	})
	select {
	case job := <-h.started:
		t.Fatalf("the handler ran delivery %d of a finished request", job.Delivery)
	default:
	}
	rs := resultsBySeq(t, j)[seq]
	info := staleInfo(t, j)
	t.Logf("results %d, stale events %q", len(rs), info)
	if len(rs) != 1 || rs[0].Worker != "gone" {
		t.Errorf("results %+v, want only the earlier one", rs)
	}
	if len(info) != 1 || !strings.Contains(info[0], "already has a result") {
		t.Errorf("stale events %q", info)
	}
}

// A request older than what its slot has served since ends with its own failed result
// (superseded), leaves the computer alone, and never runs.
func TestOlderRequestThanTheSlotServedIsSuperseded(t *testing.T) {
	j := startJS(t, streams.Options{})
	older := simhandler.Request(messages.KindReload, 41, 8)
	seq := publish(t, j, older)
	// The slot has since started a newer request (another node's).
	rec, _ := json.Marshal(worker.SlotRecord{Seq: seq + 5, Reservation: 42, Kind: messages.KindNew, Worker: "other"})
	if _, err := slotsKV(t, j).Put(context.Background(), worker.SlotServedKey(8), rec); err != nil {
		t.Fatal(err)
	}
	h := newProbe(func(ctx context.Context, job *worker.Job) (messages.Result, error) { return ok(job), nil })
	startPool(t, j, h, worker.Config{ID: "w", Concurrency: 1})
	rs := waitResults(t, j, 1, 10*time.Second)[seq]
	if len(rs) != 1 || rs[0].Outcome != messages.OutcomeFailed || rs[0].ErrorCode != worker.CodeSuperseded ||
		rs[0].RequestState != messages.StateFailed || rs[0].ComputerState != "" {
		t.Fatalf("results %+v, want one failed/superseded with the computer left alone", rs)
	}
	t.Logf("result: %s", rs[0].Error)
	select {
	case <-h.started:
		t.Fatal("the handler ran a superseded request")
	default:
	}
	if info := staleInfo(t, j); len(info) != 1 || !strings.Contains(info[0], "has since served") {
		t.Errorf("stale events %q", info)
	}
}

// A job's guard answers from the lease's known validity, and once the lease is gone
// (here: taken over) it refuses and cancels the job: a paused process that wakes up
// starts no further step.
func TestGuardRefusesAfterTheLeaseIsGone(t *testing.T) {
	j := startJS(t, streams.Options{})
	guards := make(chan error, 2)
	steal := make(chan struct{})
	h := newProbe(func(ctx context.Context, job *worker.Job) (messages.Result, error) {
		guards <- job.Guard(ctx)
		<-steal
		// Past the lease's validity (TTL 1 s, not renewed: the key was replaced).
		time.Sleep(1500 * time.Millisecond)
		err := job.Guard(ctx)
		guards <- err
		return messages.Result{}, err
	})
	startPool(t, j, h, worker.Config{ID: "g", Concurrency: 1, LeaseTTL: time.Second})
	publish(t, j, simhandler.Request(messages.KindNew, 51, 9))
	if err := <-guards; err != nil {
		t.Fatalf("guard of a fresh lease: %v", err)
	}
	if _, err := slotsKV(t, j).Put(context.Background(), messages.SlotLeaseKey(9), []byte(`{"worker":"thief"}`)); err != nil {
		t.Fatal(err)
	}
	close(steal)
	if err := <-guards; err == nil || !strings.Contains(err.Error(), worker.ErrLeaseLost.Error()) {
		t.Fatalf("guard after the takeover: %v, want %v", err, worker.ErrLeaseLost)
	}
}
