// Package progress turns a reservation's loadlog events into a progress view: one bar
// per step and an estimate of the time remaining. Estimates start from VCL's
// computerloadstate.est values and are replaced by learned times (the mean of the
// durations observed for that step) once vclq has seen it run.
package progress

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vclq/vclq/messages"
)

// Estimates holds the expected duration of each step by loadlog name.
type Estimates struct {
	base    map[string]time.Duration
	sum     map[string]time.Duration
	samples map[string]int
}

// defaultEstimate is used for a step with neither a VCL estimate nor a sample.
const defaultEstimate = time.Second

// NewEstimates starts from VCL's est values.
func NewEstimates() *Estimates {
	e := &Estimates{base: map[string]time.Duration{}, sum: map[string]time.Duration{}, samples: map[string]int{}}
	for name, s := range messages.LoadEstimates {
		e.base[name] = time.Duration(s) * time.Second
	}
	return e
}

// Learn records an observed step duration (from an end event).
func (e *Estimates) Learn(name string, d time.Duration) {
	if d < 0 {
		return
	}
	e.sum[name] += d
	e.samples[name]++
}

// Of is the expected duration of a step and whether it was learned.
func (e *Estimates) Of(name string) (time.Duration, bool) {
	if n := e.samples[name]; n > 0 {
		return e.sum[name] / time.Duration(n), true
	}
	if d, ok := e.base[name]; ok {
		return d, false
	}
	return defaultEstimate, false
}

// Plan is the steps a kind's flow is expected to run, in order. The flow may skip some
// (a READY node) or add others (copyfrompartnerMN); the view follows the events.
func Plan(kind messages.Kind) []string {
	load := []string{messages.LoadStatusCheck, messages.LoadImageBlade, messages.LoadDoesImageExist, messages.LoadStartLoad,
		messages.LoadTransferVM, messages.LoadVMSetupConfig, messages.LoadStartVM, messages.LoadMachineBooted, messages.LoadImageComplete}
	switch kind {
	case messages.KindNew, messages.KindReload:
		return append(load, messages.LoadNodeReady)
	case messages.KindReserved:
		return []string{messages.LoadReserved, messages.LoadAddingUser, messages.LoadPostReserve}
	case messages.KindReclaim:
		return []string{messages.LoadDeleted, messages.LoadInfo, messages.LoadNodeReady}
	case messages.KindImage:
		return []string{messages.LoadInfo, messages.LoadInfo}
	}
	return nil
}

// Step is one row of the view.
type Step struct {
	N        int           `json:"n"`
	Name     string        `json:"name"`
	State    string        `json:"state"` // pending, running, done, failed
	Elapsed  time.Duration `json:"elapsed"`
	Expected time.Duration `json:"expected"`
	Learned  bool          `json:"learned"`
	Info     string        `json:"info,omitempty"`
	started  time.Time
}

// View is a reservation's progress.
type View struct {
	Reservation int64            `json:"reservation"`
	Kind        messages.Kind    `json:"kind"`
	Steps       []*Step          `json:"steps"`
	Result      *messages.Result `json:"result,omitempty"`
	est         *Estimates
	seq         uint64 // request sequence of the delivery shown
}

// NewView starts an empty view.
func NewView(reservation int64, est *Estimates) *View {
	return &View{Reservation: reservation, est: est}
}

// Apply folds one event into the view. Events of an earlier delivery of another kind
// (a new before the reserved) reset the view to the latest request.
func (v *View) Apply(l *messages.Loadlog, r *messages.Result) {
	switch {
	case l != nil:
		if v.Kind != l.Kind || v.seq != l.RequestSeq {
			v.reset(l.Kind, l.RequestSeq)
		}
		s := v.step(l.Step, l.Name)
		switch l.Phase {
		case messages.PhaseBegin:
			s.State, s.started = "running", l.Time
		case messages.PhaseEnd:
			s.State, s.Elapsed, s.Info = "done", time.Duration(l.DurationMS)*time.Millisecond, l.Info
		case messages.PhaseFail:
			s.State, s.Elapsed, s.Info = "failed", time.Duration(l.DurationMS)*time.Millisecond, l.Info
		case messages.PhaseInfo:
			s.State, s.Info = "done", l.Info
		}
	case r != nil:
		if v.Kind != r.Kind || v.seq != r.RequestSeq {
			v.reset(r.Kind, r.RequestSeq)
		}
		v.Result = r
	}
}

func (v *View) reset(kind messages.Kind, seq uint64) {
	v.Kind, v.seq, v.Result = kind, seq, nil
	v.Steps = nil
	for _, name := range Plan(kind) {
		d, learned := v.est.Of(name)
		v.Steps = append(v.Steps, &Step{Name: name, State: "pending", Expected: d, Learned: learned})
	}
}

// step finds the row of event step n: the first pending planned row of that name at
// or after the last used row, else a new row.
func (v *View) step(n int, name string) *Step {
	last := -1
	for i, s := range v.Steps {
		if s.N == n && s.Name == name {
			return s
		}
		if s.N != 0 {
			last = i
		}
	}
	for i := last + 1; i < len(v.Steps); i++ {
		if v.Steps[i].Name == name && v.Steps[i].N == 0 {
			// Planned rows skipped over did not run (e.g. a READY node).
			for j := last + 1; j < i; j++ {
				v.Steps[j].State = "skipped"
			}
			v.Steps[i].N = n
			return v.Steps[i]
		}
	}
	d, learned := v.est.Of(name)
	s := &Step{N: n, Name: name, State: "pending", Expected: d, Learned: learned}
	// Insert after the last used row, before planned rows still pending.
	v.Steps = append(v.Steps, nil)
	copy(v.Steps[last+2:], v.Steps[last+1:])
	v.Steps[last+1] = s
	return s
}

// runningShare is the most of its estimate a running step is counted as done: a step
// never shows finished before its end event, however far it overruns its estimate.
const runningShare = 0.95

// maxUnfinished caps the overall fraction until the result arrives.
const maxUnfinished = 0.99

// Remaining estimates the time left at now: the unfinished part of running steps (at
// least 1-runningShare of their estimate: a running step is not done) plus pending
// steps' estimates.
func (v *View) Remaining(now time.Time) time.Duration {
	if v.Result != nil {
		return 0
	}
	var left time.Duration
	for _, s := range v.Steps {
		switch s.State {
		case "pending":
			left += s.Expected
		case "running":
			floor := time.Duration(float64(s.Expected) * (1 - runningShare))
			left += max(s.Expected-now.Sub(s.started), floor)
		}
	}
	return left
}

// Fraction is the share of the work done at now, 0..1, by time: the time the finished
// and running steps took so far over that plus the estimated time remaining. A step
// done quickly counts its real duration, not its estimate, so a pessimistic estimate
// (VCL's 255 s transfervm) makes the bar honest rather than early. Below 1 until the
// result.
func (v *View) Fraction(now time.Time) float64 {
	if v.Result != nil {
		return 1
	}
	var done time.Duration
	for _, s := range v.Steps {
		switch s.State {
		case "done", "failed":
			done += s.Elapsed
		case "running":
			done += max(0, now.Sub(s.started))
		}
	}
	total := done + v.Remaining(now)
	if total <= 0 {
		return 0
	}
	return min(maxUnfinished, float64(done)/float64(total))
}

// estimated reports whether the time remaining rests on an estimate that was not
// learned (VCL's est values or the default) for a pending or running step.
func (v *View) estimated() bool {
	for _, s := range v.Steps {
		if (s.State == "pending" || s.State == "running") && !s.Learned {
			return true
		}
	}
	return false
}

// eta is the header's estimate of the time left: "~1m8s est" while it rests on VCL's
// (not learned) estimates.
func (v *View) eta(now time.Time) string {
	if v.Result != nil {
		return "done"
	}
	left := v.Remaining(now).Round(time.Second)
	if v.estimated() {
		return "~" + left.String() + " est"
	}
	return left.String()
}

// Render draws the view as text lines, bars width characters wide. Before the first
// event it says that it waits for them.
func (v *View) Render(now time.Time, width int) string {
	var b strings.Builder
	if len(v.Steps) == 0 && v.Result == nil {
		fmt.Fprintf(&b, "waiting for events of reservation %d\n", v.Reservation)
		return b.String()
	}
	f := v.Fraction(now)
	fmt.Fprintf(&b, "reservation %d  %s  %s %3.0f%%  ETA %s\n", v.Reservation, v.Kind, bar(f, width), 100*f, v.eta(now))
	for _, s := range v.Steps {
		v.renderStep(&b, s, now, width/2)
	}
	if r := v.Result; r != nil {
		fmt.Fprintf(&b, "RESULT %s: request %s, computer %s", r.Outcome, r.RequestState, r.ComputerState)
		if r.Error != "" {
			fmt.Fprintf(&b, " (%s: %s)", r.ErrorCode, r.Error)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// renderStep draws one row: mark, name, bar, time taken (or so far) and the estimate,
// "~68s est" (VCL's) or "~2.1s learned".
func (v *View) renderStep(b *strings.Builder, s *Step, now time.Time, width int) {
	f := 0.0
	el := s.Elapsed
	switch s.State {
	case "done", "failed":
		f = 1
	case "running":
		el = max(0, now.Sub(s.started))
		if s.Expected > 0 {
			f = min(runningShare, float64(el)/float64(s.Expected))
		}
	}
	src := "est"
	if s.Learned {
		src = "learned"
	}
	taken := fmt.Sprintf("%6.1fs", el.Seconds())
	if s.State == "pending" || s.State == "skipped" {
		taken = fmt.Sprintf("%7s", "-")
	}
	expected := fmt.Sprintf("~%s %s", s.Expected.Round(100*time.Millisecond), src)
	mark := map[string]string{"pending": " ", "running": ">", "done": "✓", "failed": "✗", "skipped": "-"}[s.State]
	line := fmt.Sprintf(" %s %-18s %s %s / %-13s %s", mark, s.Name, bar(f, width), taken, expected, s.Info)
	b.WriteString(strings.TrimRight(line, " ") + "\n")
}

func bar(f float64, width int) string {
	if width < 4 {
		width = 4
	}
	n := int(f*float64(width) + 0.5)
	if f < 1 {
		n = min(n, width-1) // full only when done
	}
	n = max(0, min(width, n))
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}

// Names lists the steps with learned times, sorted (for diagnostics).
func (e *Estimates) Names() []string {
	var n []string
	for k := range e.samples {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}
