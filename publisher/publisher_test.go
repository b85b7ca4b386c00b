package publisher_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/publisher"
	"github.com/vclq/vclq/streams"
)

func result() *messages.Result {
	return &messages.Result{
		Schema: 1, ReservationID: 7001, RequestID: 5001, ComputerID: 31, Kind: messages.KindNew,
		Outcome: messages.OutcomeSuccess, RequestState: messages.StateReserved, ComputerState: messages.StateReserved,
		Worker: "mn1-1", Time: time.Now().UTC(), Deliveries: 1, RequestSeq: 12,
	}
}

func loadlog(step int, phase messages.Phase, info string) *messages.Loadlog {
	return &messages.Loadlog{
		Schema: 1, ReservationID: 7001, RequestID: 5001, ComputerID: 31, Kind: messages.KindNew,
		Name: messages.LoadStartVM, Phase: phase, Step: step, Info: info, Time: time.Now().UTC(), Worker: "mn1-1", RequestSeq: 12,
	}
}

func stored(t *testing.T, j *testutil.JetStream, stream, subject string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := j.JS.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if subject == "" || m.Subject == subject {
			out = append(out, m)
		}
	}
	return out
}

// Repeated publishes of the same event (retried step, redelivered request) store it
// once; each event has its subject, dedup id and headers.
func TestEventsAreStoredOnceWithHeaders(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	p := publisher.New(j.JS, publisher.Options{}, zerolog.Nop())
	ctx := context.Background()
	for range 3 {
		if err := p.Result(ctx, result()); err != nil {
			t.Fatal(err)
		}
		for _, l := range []*messages.Loadlog{loadlog(4, messages.PhaseBegin, ""), loadlog(4, messages.PhaseInfo, "a"), loadlog(4, messages.PhaseInfo, "b")} {
			if err := p.Loadlog(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
	}
	rs := stored(t, j, messages.StreamEvents, messages.ResultSubject(7001))
	if len(rs) != 1 {
		t.Fatalf("%d results stored, want 1", len(rs))
	}
	h := rs[0].Header
	if h.Get(messages.HeaderMsgID) != "result-7001-12" || h.Get(messages.HeaderReservation) != "7001" ||
		h.Get(messages.HeaderState) != messages.StateReserved || h.Get(messages.HeaderWorker) != "mn1-1" || h.Get(messages.HeaderKind) != "new" {
		t.Errorf("result headers %v", h)
	}
	ls := stored(t, j, messages.StreamEvents, messages.LoadlogSubject(7001))
	if len(ls) != 3 {
		t.Fatalf("%d loadlog events stored, want 3 (begin + two distinct infos)", len(ls))
	}
	if ls[0].Header.Get(messages.HeaderState) != messages.LoadStartVM {
		t.Errorf("loadlog headers %v", ls[0].Header)
	}
}

func TestInvalidEventIsNotPublished(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	p := publisher.New(j.JS, publisher.Options{}, zerolog.Nop())
	bad := result()
	bad.RequestState = "nonsense"
	if err := p.Result(context.Background(), bad); !errors.Is(err, publisher.ErrInvalidEvent) || !publisher.IsInvalid(err) {
		t.Fatalf("err %v, want ErrInvalidEvent", err)
	}
	badLog := loadlog(1, messages.PhaseBegin, "")
	badLog.Name = "my-new-state"
	if err := p.Loadlog(context.Background(), badLog); !errors.Is(err, publisher.ErrInvalidEvent) {
		t.Fatalf("err %v, want ErrInvalidEvent", err)
	}
	if n := len(stored(t, j, messages.StreamEvents, "")); n != 0 {
		t.Fatalf("%d events stored", n)
	}
}

// Dead letters keep the payload and the original headers (not Nats-*), and add the
// reason, origin and time; their dedup id is dlq-<seq>.
func TestDeadLetterHeaders(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	p := publisher.New(j.JS, publisher.Options{}, zerolog.Nop())
	orig := nats.Header{}
	orig.Set(messages.HeaderMsgID, "new-7001-1")
	orig.Set("Trace-Id", "abc")
	at := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	d := publisher.DeadLetter{
		Data: []byte(`{"schema":1}`), Header: orig, Subject: "vcl.new", Seq: 99, Deliveries: 5,
		Kind: messages.KindNew, ReservationID: 7001, RequestID: 5001, Reason: "delivery budget exhausted\nsecond line", Worker: "mn1-1", Time: at,
	}
	for range 2 {
		if err := p.DeadLetter(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	ms := stored(t, j, messages.StreamDeadLetters, "")
	if len(ms) != 1 {
		t.Fatalf("%d dead letters, want 1", len(ms))
	}
	m := ms[0]
	want := map[string]string{
		messages.HeaderMsgID: "dlq-99", messages.HeaderReason: "delivery budget exhausted second line",
		messages.HeaderOrigSubject: "vcl.new", messages.HeaderOrigSequence: "99", messages.HeaderDeliveries: "5",
		messages.HeaderDeadLetterAt: "2026-11-24T10:00:00Z", messages.HeaderReservation: "7001", messages.HeaderRequest: "5001",
		messages.HeaderKind: "new", messages.HeaderWorker: "mn1-1", "Trace-Id": "abc",
	}
	for k, v := range want {
		if got := m.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if m.Subject != "vcl.dlq.new.7001" || string(m.Data) != `{"schema":1}` {
		t.Errorf("dead letter %s %s", m.Subject, m.Data)
	}
}

// While the server is away a publish retries until it is stored, its budget or
// attempts are spent (ErrPublish with wait.ErrTimeout), or the caller's context ends
// (ErrPublish with the cause).
func TestPublishRetries(t *testing.T) {
	tests := []struct {
		name       string
		o          publisher.Options
		ctxTimeout time.Duration
		wantErr    []error
		wantText   string
		minElapsed time.Duration
		maxElapsed time.Duration
	}{
		{name: "budget spent", o: publisher.Options{Budget: 700 * time.Millisecond, Timeout: 200 * time.Millisecond, Backoff: 20 * time.Millisecond},
			wantErr: []error{publisher.ErrPublish, wait.ErrTimeout}, minElapsed: 600 * time.Millisecond, maxElapsed: 3 * time.Second},
		{name: "attempts spent", o: publisher.Options{Attempts: 3, Timeout: 100 * time.Millisecond, Backoff: 10 * time.Millisecond},
			wantErr: []error{publisher.ErrPublish, wait.ErrTimeout}, wantText: "3 tries", maxElapsed: 3 * time.Second},
		{name: "cancelled context stops retrying", o: publisher.Options{Timeout: 100 * time.Millisecond, Backoff: 50 * time.Millisecond},
			ctxTimeout: 300 * time.Millisecond, wantErr: []error{publisher.ErrPublish}, wantText: "job over", maxElapsed: 3 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := testutil.StartVCLJetStream(t, streams.Options{})
			j.Server.Stop() // the client reconnects forever: every try times out
			p := publisher.New(j.JS, tc.o, zerolog.Nop())
			ctx := context.Background()
			if tc.ctxTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeoutCause(ctx, tc.ctxTimeout, errors.New("job over"))
				defer cancel()
			}
			start := time.Now()
			err := p.Result(ctx, result())
			elapsed := time.Since(start)
			t.Logf("after %s: %v", elapsed.Round(time.Millisecond), err)
			for _, w := range tc.wantErr {
				if !errors.Is(err, w) {
					t.Errorf("err %v, want it to wrap %v", err, w)
				}
			}
			if errors.Is(err, publisher.ErrRejected) {
				t.Errorf("err %v: a server that is away is not a rejection", err)
			}
			if tc.wantText != "" && (err == nil || !strings.Contains(err.Error(), tc.wantText)) {
				t.Errorf("err %v, want it to say %q", err, tc.wantText)
			}
			if elapsed < tc.minElapsed || elapsed > tc.maxElapsed {
				t.Errorf("took %s, want %s..%s", elapsed, tc.minElapsed, tc.maxElapsed)
			}
		})
	}
}

// Asynchronous errors (a denied publish shows only there) are logged, passed to the
// previous handler, and reported with a publish that fails soon after.
func TestWatchAsyncErrors(t *testing.T) {
	j := testutil.StartJetStream(t)
	prev := make(chan error, 100)
	j.NC.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case prev <- err:
		default:
		}
	})
	p := publisher.New(j.JS, publisher.Options{Attempts: 1, Timeout: 100 * time.Millisecond}, zerolog.Nop())
	p.WatchAsyncErrors(j.NC)
	// Provoke an asynchronous error: a slow consumer.
	block := make(chan struct{})
	defer close(block)
	sub, err := j.NC.Subscribe("slow", func(*nats.Msg) { <-block })
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(1, 1024)
	for range 10 {
		_ = j.NC.Publish("slow", []byte("x"))
	}
	_ = j.NC.Flush()
	select {
	case <-prev:
	case <-time.After(5 * time.Second):
		t.Fatal("previous error handler not called")
	}
	err = p.Result(context.Background(), result()) // no stream: fails
	if err == nil || !strings.Contains(err.Error(), "asynchronous error") {
		t.Fatalf("err %v, want it to mention the asynchronous error", err)
	}
}

// A batch is stored in order, each event once: sending it again (a re-run flush)
// stores nothing; an invalid event fails the batch before anything is sent.
func TestLoadlogBatchStoresInOrderOnce(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	p := publisher.New(j.JS, publisher.Options{}, zerolog.Nop())
	ctx := context.Background()
	var batch []*messages.Loadlog
	for step := 1; step <= 20; step++ {
		batch = append(batch, loadlog(step, messages.PhaseBegin, ""), loadlog(step, messages.PhaseEnd, ""))
	}
	for range 2 {
		if err := p.LoadlogBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	ls := stored(t, j, messages.StreamEvents, messages.LoadlogSubject(7001))
	if len(ls) != len(batch) {
		t.Fatalf("%d events stored, want %d", len(ls), len(batch))
	}
	for i, m := range ls {
		if want := batch[i].MsgID(); m.Header.Get(messages.HeaderMsgID) != want {
			t.Fatalf("event %d stored is %s, want %s (the batch's order)", i, m.Header.Get(messages.HeaderMsgID), want)
		}
	}
	bad := loadlog(99, messages.PhaseBegin, "")
	bad.Name = "not a state"
	if err := p.LoadlogBatch(ctx, []*messages.Loadlog{loadlog(98, messages.PhaseBegin, ""), bad}); !errors.Is(err, publisher.ErrInvalidEvent) {
		t.Fatalf("err %v, want ErrInvalidEvent", err)
	}
	if n := len(stored(t, j, messages.StreamEvents, messages.LoadlogSubject(7001))); n != len(batch) {
		t.Fatalf("%d events stored after an invalid batch, want %d", n, len(batch))
	}
}
