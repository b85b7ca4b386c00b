package simhandler_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/worker"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		spec    string
		wantErr bool
		check   func(simhandler.Spec) bool
	}{
		{"", false, func(s simhandler.Spec) bool { return s.Events && s.WorkMax == 0 }},
		{"work=50ms..150ms,fail=reservations:7|9,failall=true,hang=reservations:5,crash=reservations:11", false, func(s simhandler.Spec) bool {
			return s.WorkMin == 50*time.Millisecond && s.WorkMax == 150*time.Millisecond && s.Fail.Reservations[7] && s.Fail.Reservations[9] &&
				s.FailAll && s.Hang.Reservations[5] && s.Crash.Reservations[11]
		}},
		{"work=1s,permfail=computers:3,events=false,failfirst=2,journal=/tmp/j", false, func(s simhandler.Spec) bool {
			return s.WorkMin == time.Second && s.WorkMax == time.Second && s.PermFail.Computers[3] && !s.Events && s.FailFirst == 2 && s.Journal == "/tmp/j"
		}},
		{"hang=kinds:new|image", false, func(s simhandler.Spec) bool {
			return s.Hang.Kinds[messages.KindNew] && s.Hang.Kinds[messages.KindImage] && !s.Hang.Kinds[messages.KindReclaim]
		}},
		{"hang=kinds:bogus", true, nil},
		{"work=2s..1s", true, nil},
		{"work", true, nil},
		{"fail=reservations:x", true, nil},
		{"fail=users:1", true, nil},
		{"bogus=1", true, nil},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			s, err := simhandler.Parse(tc.spec)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, wantErr %v", err, tc.wantErr)
			}
			if tc.check != nil && !tc.check(s) {
				t.Errorf("spec %+v", s)
			}
		})
	}
}

type sink struct{ evs []worker.StepEvent }

func (s *sink) Loadlog(_ context.Context, ev worker.StepEvent) error {
	s.evs = append(s.evs, ev)
	return nil
}

// Every simulated job's loadlog says that it was simulated: an info event first, and
// the end event's info.
func TestEventsSaySimulated(t *testing.T) {
	h, err := simhandler.New("")
	if err != nil {
		t.Fatal(err)
	}
	j := job(1, 1, 1)
	if _, err := h.Handle(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	evs := j.Events.(*sink).evs
	t.Logf("%d events: %+v", len(evs), evs)
	if len(evs) != 3 {
		t.Fatalf("%d events, want info, begin, end", len(evs))
	}
	if e := evs[0]; e.Phase != messages.PhaseInfo || e.Name != messages.LoadInfo || e.Info != simhandler.SimulatedNotice {
		t.Errorf("first event %+v, want the simulated notice", e)
	}
	if e := evs[2]; e.Phase != messages.PhaseEnd || e.Info != "simulated" {
		t.Errorf("end event %+v, want info \"simulated\"", e)
	}
}

func job(res, computer int64, delivery int) *worker.Job {
	return &worker.Job{Request: simhandler.Request(messages.KindNew, res, computer), Seq: uint64(res), Delivery: delivery, Events: &sink{}, Worker: "w"}
}

func TestHandle(t *testing.T) {
	h, err := simhandler.New("fail=reservations:2,permfail=reservations:3,hang=reservations:4,failfirst=1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := h.Handle(ctx, job(1, 1, 1)); !errors.Is(err, simhandler.ErrSimulated) || worker.IsPermanent(err) {
		t.Errorf("failfirst on delivery 1: %v", err)
	}
	r, err := h.Handle(ctx, job(1, 1, 2))
	if err != nil || r.RequestState != messages.StateReserved || r.IP == "" {
		t.Errorf("delivery 2: %+v %v", r, err)
	}
	if _, err := h.Handle(ctx, job(2, 1, 5)); !errors.Is(err, simhandler.ErrSimulated) || worker.IsPermanent(err) {
		t.Errorf("fail: %v", err)
	}
	if _, err := h.Handle(ctx, job(3, 1, 5)); !worker.IsPermanent(err) {
		t.Errorf("permfail: %v", err)
	}
	hctx, cancel := context.WithCancelCause(ctx)
	time.AfterFunc(50*time.Millisecond, func() { cancel(worker.ErrCancelled) })
	if _, err := h.Handle(hctx, job(4, 1, 5)); !errors.Is(err, worker.ErrCancelled) {
		t.Errorf("hang: %v", err)
	}
}

// Every kind's success result is a valid result once the pool fills the envelope.
func TestRequestsAndResultsAreValid(t *testing.T) {
	h, _ := simhandler.New("events=false")
	for _, k := range messages.Kinds {
		r := simhandler.Request(k, 5, 6)
		if err := r.Validate(); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		res, err := h.Handle(context.Background(), &worker.Job{Request: r, Delivery: 1, Events: &sink{}})
		if err != nil {
			t.Fatal(err)
		}
		res.Schema, res.ReservationID, res.Kind, res.Outcome, res.Worker, res.Time = 1, 5, k, messages.OutcomeSuccess, "w", time.Now()
		if err := res.Validate(); err != nil {
			t.Errorf("%s result: %v", k, err)
		}
	}
}

// The journal records an overlap when two handlers hold one slot, takes over a
// marker left by a dead process, and counts completions.
func TestJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	j, err := simhandler.OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	end1 := j.Begin(job(1, 7, 1))
	end2 := j.Begin(job(2, 7, 1)) // same slot while 1 runs: overlap
	end2("ok")
	end1("ok")
	end3 := j.Begin(job(3, 7, 1)) // slot free again: no overlap
	end3("fail")
	// A marker left by a process that no longer exists (kill -9) is stale.
	if err := os.WriteFile(path+".slots/computer-8", []byte("999999999 9 9"), 0o644); err != nil {
		t.Fatal(err)
	}
	j.Begin(job(4, 8, 2))("ok")
	rep, err := simhandler.ReadJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Overlaps) != 1 || !strings.Contains(rep.Overlaps[0], "res=2") {
		t.Errorf("overlaps %v, want the one of reservation 2", rep.Overlaps)
	}
	if rep.Begins != 4 || rep.Ends["ok"] != 3 || rep.Ends["fail"] != 1 || rep.Stale != 1 || rep.OKByReservation[1] != 1 {
		t.Errorf("report %+v", rep)
	}
	if _, err := os.Stat(path + ".slots/computer-7"); !os.IsNotExist(err) {
		t.Errorf("marker left behind: %v", err)
	}
}
