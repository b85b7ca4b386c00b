package eventlog_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

func TestFilterSubject(t *testing.T) {
	for _, tc := range []struct {
		f       eventlog.Filter
		want    string
		wantErr bool
	}{
		{eventlog.Filter{}, "vcl.events.>", false},
		{eventlog.Filter{Reservation: 7}, "vcl.events.*.7", false},
		{eventlog.Filter{Type: "result"}, "vcl.events.result.>", false},
		{eventlog.Filter{Type: "loadlog", Reservation: 9}, "vcl.events.loadlog.9", false},
		{eventlog.Filter{Type: "bogus"}, "", true},
	} {
		got, err := tc.f.Subject()
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("%+v: got %q, %v", tc.f, got, err)
		}
	}
}

func publish(t *testing.T, nc *nats.Conn, subject string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subject, b); err != nil {
		t.Fatal(err)
	}
}

func TestReadOneReservationThenFollow(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	now := time.Now().UTC()
	ll := func(res int64, name string) *messages.Loadlog {
		return &messages.Loadlog{Schema: 1, ReservationID: res, RequestID: 1, ComputerID: 2, Kind: messages.KindNew, Name: name, Phase: messages.PhaseBegin, Step: 1, Time: now, Worker: "w1", RequestSeq: 3}
	}
	publish(t, j.NC, messages.LoadlogSubject(7), ll(7, "statuscheck"))
	publish(t, j.NC, messages.LoadlogSubject(8), ll(8, "statuscheck"))
	publish(t, j.NC, messages.LoadlogSubject(7), ll(7, "startload"))
	publish(t, j.NC, messages.ResultSubject(7), &messages.Result{Schema: 1, ReservationID: 7, Kind: messages.KindNew, Outcome: messages.OutcomeSuccess, RequestState: "reserved", ComputerState: "reserved", Worker: "w1", Time: now, RequestSeq: 3})
	publish(t, j.NC, messages.LoadlogSubject(7), map[string]any{"schema": 1, "junk": true})
	testutil.WaitFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		s, err := j.JS.Stream(ctx, messages.StreamEvents)
		if err != nil {
			return err
		}
		if i, _ := s.Info(ctx); i.State.Msgs != 5 {
			return context.DeadlineExceeded
		}
		return nil
	})

	var got []eventlog.Event
	if err := eventlog.Read(ctx, j.JS, eventlog.Filter{Reservation: 7}, func(e eventlog.Event) error {
		got = append(got, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0].Loadlog.Name != "statuscheck" || got[1].Loadlog.Name != "startload" ||
		got[2].Result == nil || got[2].Result.RequestState != "reserved" || got[3].Err == "" {
		t.Fatalf("events = %+v", got)
	}

	// Follow sees an event published after it started.
	seen := make(chan string, 1)
	go func() {
		_ = eventlog.Read(ctx, j.JS, eventlog.Filter{Reservation: 8, Type: "loadlog", Follow: true}, func(e eventlog.Event) error {
			if e.Loadlog != nil && e.Loadlog.Name == "nodeready" {
				seen <- e.Loadlog.Name
				return eventlog.ErrStop
			}
			return nil
		})
	}()
	publish(t, j.NC, messages.LoadlogSubject(8), ll(8, "nodeready"))
	select {
	case <-seen:
	case <-ctx.Done():
		t.Fatal("follow did not see the new event")
	}

	// An empty selection returns at once.
	start := time.Now()
	if err := eventlog.Read(ctx, j.JS, eventlog.Filter{Reservation: 999}, func(eventlog.Event) error {
		t.Fatal("event for an unknown reservation")
		return nil
	}); err != nil || time.Since(start) > 3*time.Second {
		t.Fatalf("empty read: %v after %s", err, time.Since(start))
	}
}

// After resumes a read after a stream sequence: nothing before or at it again.
func TestReadAfterSequence(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	now := time.Now().UTC()
	for step := 1; step <= 5; step++ {
		b, _ := json.Marshal(messages.Loadlog{Schema: 1, ReservationID: 7, RequestID: 1, ComputerID: 2, Kind: messages.KindNew, Name: "statuscheck",
			Phase: messages.PhaseBegin, Step: step, Time: now, Worker: "w1", RequestSeq: 3})
		if _, err := j.JS.Publish(ctx, messages.LoadlogSubject(7), b); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		f    eventlog.Filter
		want []uint64
	}{
		{eventlog.Filter{Reservation: 7, After: 3}, []uint64{4, 5}},
		{eventlog.Filter{Reservation: 7, After: 3, Last: 5}, []uint64{4, 5}},
		{eventlog.Filter{Reservation: 7, After: 5}, nil},
	} {
		var got []uint64
		if err := eventlog.Read(ctx, j.JS, tc.f, func(ev eventlog.Event) error { got = append(got, ev.Seq); return nil }); err != nil {
			t.Fatalf("%+v: %v", tc.f, err)
		}
		if len(got) != len(tc.want) || (len(got) > 0 && (got[0] != tc.want[0] || got[len(got)-1] != tc.want[len(tc.want)-1])) {
			t.Errorf("%+v: read %v, want %v", tc.f, got, tc.want)
		}
	}
}
