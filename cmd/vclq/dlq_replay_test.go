package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vclq/vclq/dlq"
	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// A request whose handler fails — on every delivery (retryable), or at once
// (permanent) — ends as a dead letter with a failed result; once the cause is fixed,
// `vclq dlq replay` re-drives it to success.
func TestFailingRequestIsDeadLetteredThenReplayed(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		deliveries int
		reason     []string // in the dead letter's reason
	}{
		{"retryable", errors.New("host unreachable"), 3, []string{"delivery budget exhausted", "host unreachable"}},
		{"permanent", worker.Permanent(errors.New("image vmwarelinux-centos7-v3 not found")), 1, []string{"permanent failure", "not found"}},
	} {
		t.Run(tc.name, func(t *testing.T) { testDeadLetterReplay(t, tc.err, tc.deliveries, tc.reason) })
	}
}

func testDeadLetterReplay(t *testing.T, failure error, deliveries int, reason []string) {
	j := testutil.StartVCLJetStream(t, streams.Options{AckWait: 2 * time.Second, MaxDeliver: 3})
	var broken atomic.Bool
	broken.Store(true)
	var calls atomic.Int32
	h := worker.HandlerFunc(func(_ context.Context, job *worker.Job) (messages.Result, error) {
		calls.Add(1)
		if broken.Load() {
			return messages.Result{}, failure
		}
		return messages.Result{RequestState: messages.StateReserved, ComputerState: messages.StateReserved}, nil
	})
	pool, err := worker.New(j.JS, j.NC, h, worker.Config{ID: "w1", Concurrency: 2, LeaseTTL: 2 * time.Second,
		RetryDelay: 100 * time.Millisecond, MaxRetryDelay: 200 * time.Millisecond}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = pool.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	payload, err := os.ReadFile("../../messages/testdata/new.json")
	if err != nil {
		t.Fatal(err)
	}
	if code, out, errs := vclqRun(t, string(payload), "submit", "new", "-", "--nats="+j.URL); code != exitOK {
		t.Fatalf("submit: %s %s", out, errs)
	}
	res := waitResult(t, j, 7001, func(r *messages.Result) bool { return r.Outcome == messages.OutcomeFailed })
	t.Logf("failed result after %d deliveries (handler ran %d times): %s %s", res.Deliveries, calls.Load(), res.ErrorCode, res.Error)
	if res.Deliveries != deliveries || !strings.Contains(res.Error, failure.Error()) {
		t.Fatalf("failed result %+v", res)
	}
	if int(calls.Load()) != deliveries {
		t.Fatalf("handler ran %d times, want %d", calls.Load(), deliveries)
	}
	var dl []dlq.Entry
	testutil.WaitFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		st, err := dlq.Open(context.Background(), j.JS)
		if err != nil {
			return err
		}
		dl, err = st.List(context.Background(), 0)
		if err == nil && len(dl) != 1 {
			err = fmt.Errorf("%d dead letters, want 1", len(dl))
		}
		return err
	})
	t.Logf("dead letter: %q", dl[0].Reason)
	for _, w := range reason {
		if !strings.Contains(dl[0].Reason, w) {
			t.Errorf("dead letter reason %q does not say %q", dl[0].Reason, w)
		}
	}
	if dl[0].OriginalSubject != "vcl.new" || dl[0].Deliveries != deliveries {
		t.Fatalf("dead letter %+v", dl[0])
	}

	broken.Store(false)
	if code, out, errs := vclqRun(t, "", "dlq", "replay", "--all", "--nats="+j.URL); code != exitOK {
		t.Fatalf("dlq replay: %s %s", out, errs)
	}
	res = waitResult(t, j, 7001, func(r *messages.Result) bool { return r.Outcome == messages.OutcomeSuccess })
	if res.RequestState != "reserved" {
		t.Fatalf("replayed result %+v", res)
	}
	if code, out, _ := vclqRun(t, "", "dlq", "list", "--nats="+j.URL); code != exitOK || !strings.Contains(out, "0 dead letter(s)") {
		t.Fatalf("dead letter left after replay: %s", out)
	}
}

func waitResult(t *testing.T, j *testutil.JetStream, reservation int64, match func(*messages.Result) bool) *messages.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got *messages.Result
	_ = eventlog.Read(ctx, j.JS, eventlog.Filter{Reservation: reservation, Type: "result", Follow: true}, func(ev eventlog.Event) error {
		if ev.Result != nil && match(ev.Result) {
			got = ev.Result
			return eventlog.ErrStop
		}
		return nil
	})
	if got == nil {
		t.Fatalf("no matching result for reservation %d", reservation)
	}
	return got
}
