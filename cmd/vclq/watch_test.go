package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/progress"
	"github.com/vclq/vclq/streams"
)

// fakeTerminal is standard output as a terminal cols wide.
type fakeTerminal struct {
	testutil.SyncBuffer
	cols int
}

func (f *fakeTerminal) TerminalWidth() (int, bool) { return f.cols, true }

// progressPlanNew is the loadlog names of a new request's flow.
func progressPlanNew() []string { return progress.Plan(messages.KindNew) }

// screens splits a terminal's output into the screens drawn (each after a clear).
func screens(out string) []string {
	parts := strings.Split(out, "\x1b[H\x1b[2J")
	return parts[1:]
}

// runOn runs the CLI with stdout on w.
func runOn(t *testing.T, w interface{ Write([]byte) (int, error) }, args ...string) (int, string) {
	t.Helper()
	var errb testutil.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := run(ctx, args, strings.NewReader(""), w, &errb)
	return code, errb.String()
}

// On a terminal, redraws (every millisecond here) and events (published while watch
// runs) draw the same view concurrently: under -race this finds any unguarded access.
// Lines are cut to the terminal's width.
func TestWatchTerminalRedrawsWhileEventsArrive(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	now := time.Now().UTC()
	pub := func(subject string, v any) error {
		b, _ := json.Marshal(v)
		_, err := j.JS.Publish(context.Background(), subject, b)
		return err
	}
	long := strings.Repeat("a very long line of detail from the guest ", 10)
	names := progressPlanNew()
	published := make(chan error, 1)
	go func() {
		for step := 1; step <= 40; step++ {
			for _, ph := range []messages.Phase{messages.PhaseBegin, messages.PhaseEnd} {
				l := messages.Loadlog{Schema: 1, ReservationID: 7, Kind: messages.KindNew, Name: names[(step-1)%len(names)], Phase: ph,
					Step: step, Time: now, Worker: "w", RequestSeq: 2, DurationMS: 10, Info: long}
				if err := pub(messages.LoadlogSubject(7), l); err != nil {
					published <- err
					return
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
		published <- pub(messages.ResultSubject(7), messages.Result{Schema: 1, ReservationID: 7, Kind: messages.KindNew, Outcome: messages.OutcomeSuccess,
			RequestState: "reserved", ComputerState: "reserved", Worker: "w", Time: now, RequestSeq: 2})
	}()
	term := &fakeTerminal{cols: 72}
	code, errs := runOn(t, term, "watch", "7", "--nats="+j.URL, "--redraw", "1ms", "--learn", "0")
	if err := <-published; err != nil {
		t.Fatalf("publish: %v", err)
	}
	if code != exitOK {
		t.Fatalf("watch exited %d: %s", code, errs)
	}
	drawn := screens(term.String())
	if len(drawn) < 2 {
		t.Fatalf("%d screens drawn", len(drawn))
	}
	if first := drawn[0]; !strings.Contains(first, "waiting for events of reservation 7") {
		t.Errorf("first screen %q, want it to say it waits", first)
	}
	if last := drawn[len(drawn)-1]; !strings.Contains(last, "RESULT success") || !strings.Contains(last, "✓ "+names[39%len(names)]) {
		t.Errorf("last screen (of %d):\n%q\nbefore:\n%q", len(drawn), last, drawn[max(0, len(drawn)-2)])
	}
	lines, cut := 0, 0
	for _, s := range drawn {
		for _, l := range strings.Split(s, "\n") {
			lines++
			if n := utf8.RuneCountInString(l); n > term.cols {
				t.Fatalf("line of %d characters on a %d-column terminal: %q", n, term.cols, l)
			}
			if strings.HasSuffix(l, "…") {
				cut++
			}
		}
	}
	if cut == 0 {
		t.Error("no long line was cut")
	}
	t.Logf("%d screens, %d lines, %d cut to %d columns", len(drawn), lines, cut, term.cols)
}

// A reservation without events: watch says it waits, then that none came, and exits 1
// after --timeout, on a terminal and off it.
func TestWatchUnknownReservationTimesOut(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	for _, tc := range []struct {
		name string
		tty  bool
	}{{"terminal", true}, {"pipe", false}} {
		t.Run(tc.name, func(t *testing.T) {
			var out interface {
				Write([]byte) (int, error)
				String() string
			} = &testutil.SyncBuffer{}
			if tc.tty {
				out = &fakeTerminal{cols: 80}
			}
			start := time.Now()
			code, errs := runOn(t, out, "watch", "424242", "--nats="+j.URL, "--timeout", "700ms", "--learn", "0")
			took := time.Since(start)
			t.Logf("exit %d after %s; stdout %q; stderr %q", code, took.Round(time.Millisecond), out.String(), errs)
			if code != exitFailure {
				t.Errorf("exit %d, want 1", code)
			}
			if !strings.Contains(errs, "no events for reservation 424242 within 700ms") {
				t.Errorf("stderr %q does not say that no event came", errs)
			}
			waiting := errs
			if tc.tty {
				waiting = out.String()
			}
			if !strings.Contains(waiting, "waiting for events of reservation 424242") {
				t.Errorf("watch did not say it waits")
			}
			if took < 700*time.Millisecond || took > 15*time.Second {
				t.Errorf("took %s for a 700ms timeout", took)
			}
		})
	}
}
