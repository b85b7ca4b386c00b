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
