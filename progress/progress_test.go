package progress

import (
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/messages"
)

func ll(step int, name string, phase messages.Phase, at time.Time, d time.Duration) *messages.Loadlog {
	return &messages.Loadlog{ReservationID: 7, Kind: messages.KindNew, RequestSeq: 3, Step: step, Name: name, Phase: phase, Time: at, DurationMS: d.Milliseconds()}
}

func TestEstimatesStartFromVCLThenLearn(t *testing.T) {
	e := NewEstimates()
	if d, learned := e.Of(messages.LoadTransferVM); d != 255*time.Second || learned {
		t.Fatalf("transfervm estimate %s learned=%t, want VCL's 255s", d, learned)
	}
	e.Learn(messages.LoadTransferVM, 2*time.Second)
	e.Learn(messages.LoadTransferVM, 4*time.Second)
	if d, learned := e.Of(messages.LoadTransferVM); d != 3*time.Second || !learned {
		t.Fatalf("learned transfervm %s, want the 3s mean", d)
	}
	if d, _ := e.Of("somethingnew"); d != defaultEstimate {
		t.Fatalf("unknown step %s", d)
	}
}

func TestViewFollowsTheFlow(t *testing.T) {
	e := NewEstimates()
	v := NewView(7, e)
	t0 := time.Unix(1000, 0)
	v.Apply(ll(1, messages.LoadStatusCheck, messages.PhaseBegin, t0, 0), nil)
	v.Apply(ll(1, messages.LoadStatusCheck, messages.PhaseEnd, t0, time.Second), nil)
	full := v.Remaining(t0.Add(time.Second))
	// A READY node jumps from statuscheck to nodeready: the load rows are skipped.
	v.Apply(ll(2, messages.LoadNodeReady, messages.PhaseBegin, t0.Add(time.Second), 0), nil)
	if v.Steps[1].State != "skipped" || v.Steps[8].State != "skipped" {
		t.Fatalf("load rows not skipped: %+v", v.Steps[1])
	}
	if r := v.Remaining(t0.Add(time.Second)); r >= full {
		t.Fatalf("remaining %s did not drop below %s after skipping the load", r, full)
	}
	v.Apply(ll(2, messages.LoadNodeReady, messages.PhaseEnd, t0.Add(time.Second), 0), nil)
	v.Apply(nil, &messages.Result{ReservationID: 7, Kind: messages.KindNew, RequestSeq: 3, Outcome: messages.OutcomeSuccess, RequestState: "reserved", ComputerState: "reserved"})
	if v.Remaining(t0) != 0 || v.Fraction(t0) != 1 {
		t.Fatal("finished view not at 100%")
	}
	out := v.Render(t0, 20)
	if !strings.Contains(out, "RESULT success") || !strings.Contains(out, "✓ statuscheck") {
		t.Fatalf("render:\n%s", out)
	}
}

func TestViewInsertsUnplannedStepsAndTracksRunning(t *testing.T) {
	v := NewView(7, NewEstimates())
	t0 := time.Unix(1000, 0)
	for i, n := range []string{messages.LoadStatusCheck, messages.LoadImageBlade, messages.LoadDoesImageExist} {
		v.Apply(ll(i+1, n, messages.PhaseBegin, t0, 0), nil)
		v.Apply(ll(i+1, n, messages.PhaseEnd, t0, 0), nil)
	}
	v.Apply(ll(4, messages.LoadCopyFromPartnerMN, messages.PhaseBegin, t0, 0), nil)
	if v.Steps[3].Name != messages.LoadCopyFromPartnerMN || v.Steps[4].Name != messages.LoadStartLoad {
		t.Fatalf("unplanned step not inserted in place: %s, %s", v.Steps[3].Name, v.Steps[4].Name)
	}
	r1 := v.Remaining(t0)
	r2 := v.Remaining(t0.Add(500 * time.Millisecond))
	if r2 >= r1 {
		t.Fatalf("remaining did not fall while a step runs: %s then %s", r1, r2)
	}
	// A new request (the reserved after the new) starts a fresh view.
	v.Apply(&messages.Loadlog{Kind: messages.KindReserved, RequestSeq: 9, Step: 1, Name: messages.LoadReserved, Phase: messages.PhaseBegin, Time: t0}, nil)
	if v.Kind != messages.KindReserved || len(v.Steps) != 3 {
		t.Fatalf("view not reset for the next request: %s %d", v.Kind, len(v.Steps))
	}
}

// Steps that ran quickly against VCL's estimates, then 0.3 s into machinebooted (VCL:
// 68 s): the view neither claims most of the work done nor hides that the time left
// is VCL's estimate; a step overrunning its estimate is not shown finished.
func TestProgressIsHonestAboutEstimates(t *testing.T) {
	t0 := time.Unix(1000, 0)
	names := []string{messages.LoadStatusCheck, messages.LoadImageBlade, messages.LoadDoesImageExist, messages.LoadStartLoad,
		messages.LoadTransferVM, messages.LoadVMSetupConfig, messages.LoadStartVM}
	booting := func() (*View, time.Time) {
		v := NewView(7, NewEstimates())
		at := t0
		for i, n := range names {
			v.Apply(ll(i+1, n, messages.PhaseBegin, at, 0), nil)
			at = at.Add(100 * time.Millisecond)
			v.Apply(ll(i+1, n, messages.PhaseEnd, at, 100*time.Millisecond), nil)
		}
		v.Apply(ll(len(names)+1, messages.LoadMachineBooted, messages.PhaseBegin, at, 0), nil)
		return v, at
	}
	cases := []struct {
		name      string
		after     time.Duration
		maxFrac   float64
		wantInOut []string
	}{
		{"0.3s into boot", 300 * time.Millisecond, 0.10, []string{"> machinebooted", "~1m8s est", "ETA ~"}},
		{"boot overran its estimate", 90 * time.Second, maxUnfinished, []string{"> machinebooted"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, at := booting()
			now := at.Add(c.after)
			f := v.Fraction(now)
			out := v.Render(now, 20)
			t.Logf("fraction %.3f, remaining %s\n%s", f, v.Remaining(now), out)
			if f > c.maxFrac || f >= 1 {
				t.Errorf("fraction %.3f, want at most %.2f and below 1 while running", f, c.maxFrac)
			}
			for _, w := range c.wantInOut {
				if !strings.Contains(out, w) {
					t.Errorf("render lacks %q", w)
				}
			}
			if v.Remaining(now) <= 0 {
				t.Errorf("remaining %s while a step runs", v.Remaining(now))
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "> machinebooted") && strings.Contains(line, "[##########]") {
					t.Errorf("running step drawn full: %s", line)
				}
			}
		})
	}
}

// Before the first event the view says it waits, not "0% ETA 0s".
func TestRenderBeforeTheFirstEvent(t *testing.T) {
	out := NewView(7001, NewEstimates()).Render(time.Now(), 20)
	if !strings.Contains(out, "waiting for events of reservation 7001") || strings.Contains(out, "ETA") {
		t.Fatalf("render before any event: %q", out)
	}
}
