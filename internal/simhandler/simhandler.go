package simhandler

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/worker"
)

// SimulatedNotice is the info event that opens every simulated job's loadlog.
const SimulatedNotice = "simulated handler: no VM was touched"

// ErrSimulated is wrapped by every failure the handler simulates.
var ErrSimulated = errors.New("simulated failure")

// Selector picks jobs by reservation id, computer id or request kind.
type Selector struct {
	Reservations map[int64]bool
	Computers    map[int64]bool
	Kinds        map[messages.Kind]bool
}

// Match reports whether the job is selected.
func (s Selector) Match(r *messages.Request) bool {
	return s.Reservations[r.Reservation.ID] || s.Computers[r.Computer.ID] || s.Kinds[r.Kind]
}

// Spec is a parsed handler spec (see the package doc).
type Spec struct {
	WorkMin, WorkMax time.Duration
	Fail             Selector
	FailFirst        int
	PermFail         Selector
	FailAll          bool
	Hang             Selector
	Crash            Selector
	Events           bool
	Journal          string
}

// Parse reads a spec. The empty spec is a handler that succeeds at once.
func Parse(spec string) (Spec, error) {
	s := Spec{Events: true}
	for _, kv := range strings.Split(spec, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return s, fmt.Errorf("simhandler: %q is not key=value", kv)
		}
		var err error
		switch k {
		case "work":
			lo, hi, found := strings.Cut(v, "..")
			if s.WorkMin, err = time.ParseDuration(lo); err == nil {
				s.WorkMax = s.WorkMin
				if found {
					s.WorkMax, err = time.ParseDuration(hi)
				}
			}
			if err == nil && (s.WorkMin < 0 || s.WorkMax < s.WorkMin) {
				err = fmt.Errorf("bad range %q", v)
			}
		case "fail":
			s.Fail, err = parseSelector(v)
		case "permfail":
			s.PermFail, err = parseSelector(v)
		case "hang":
			s.Hang, err = parseSelector(v)
		case "crash":
			s.Crash, err = parseSelector(v)
		case "failall":
			s.FailAll, err = strconv.ParseBool(v)
		case "events":
			s.Events, err = strconv.ParseBool(v)
		case "failfirst":
			s.FailFirst, err = strconv.Atoi(v)
		case "journal":
			s.Journal = v
		default:
			err = errors.New("unknown key")
		}
		if err != nil {
			return s, fmt.Errorf("simhandler: %s: %w", kv, err)
		}
	}
	return s, nil
}

func parseSelector(v string) (Selector, error) {
	s := Selector{Reservations: map[int64]bool{}, Computers: map[int64]bool{}, Kinds: map[messages.Kind]bool{}}
	what, ids, ok := strings.Cut(v, ":")
	if !ok {
		return s, fmt.Errorf("%q is not reservations:a|b, computers:a|b or kinds:a|b", v)
	}
	var m map[int64]bool
	switch what {
	case "reservations":
		m = s.Reservations
	case "computers":
		m = s.Computers
	case "kinds":
		for _, k := range strings.Split(ids, "|") {
			if !messages.Kind(k).Valid() {
				return s, fmt.Errorf("%q is not a request kind", k)
			}
			s.Kinds[messages.Kind(k)] = true
		}
		return s, nil
	default:
		return s, fmt.Errorf("%q: select reservations, computers or kinds", what)
	}
	for _, id := range strings.Split(ids, "|") {
		n, err := strconv.ParseInt(id, 10, 64)
		if err != nil || n <= 0 {
			return s, fmt.Errorf("%q is not an id", id)
		}
		m[n] = true
	}
	return s, nil
}

// Handler simulates a state flow.
type Handler struct {
	spec    Spec
	journal *Journal
}

// New parses spec and opens the journal, if any.
func New(spec string) (*Handler, error) {
	s, err := Parse(spec)
	if err != nil {
		return nil, err
	}
	h := &Handler{spec: s}
	if s.Journal != "" {
		if h.journal, err = OpenJournal(s.Journal); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// Spec is the parsed spec.
func (h *Handler) Spec() Spec { return h.spec }

// Handle runs the simulated job.
func (h *Handler) Handle(ctx context.Context, job *worker.Job) (res messages.Result, err error) {
	r := job.Request
	if h.spec.Crash.Match(r) {
		fmt.Fprintf(os.Stderr, "simhandler: crashing the process on reservation %d as configured\n", r.Reservation.ID)
		os.Exit(3)
	}
	if h.journal != nil {
		release := h.journal.Begin(job)
		defer func() { release(outcome(ctx, err)) }()
	}
	start := time.Now()
	if h.spec.Events {
		// Whoever reads the reservation's loadlog (VCL's web UI through the bridge,
		// vclq watch) learns first that nothing real happened.
		if err := job.Events.Loadlog(ctx, worker.StepEvent{Step: 1, Name: messages.LoadInfo, Phase: messages.PhaseInfo, Info: SimulatedNotice, At: start}); err != nil {
			return res, err
		}
		if err := job.Events.Loadlog(ctx, worker.StepEvent{Step: 1, Name: messages.LoadStatusCheck, Phase: messages.PhaseBegin, At: start}); err != nil {
			return res, err
		}
	}
	if h.spec.Hang.Match(r) {
		<-ctx.Done()
		return res, fmt.Errorf("reservation %d: hung until: %w", r.Reservation.ID, context.Cause(ctx))
	}
	if d := h.workTime(); d > 0 {
		if err := wait.Sleep(ctx, d); err != nil {
			return res, fmt.Errorf("reservation %d: working: %w", r.Reservation.ID, err)
		}
	}
	switch {
	case h.spec.PermFail.Match(r):
		return failState(r), worker.Permanent(fmt.Errorf("reservation %d: %w (permanent)", r.Reservation.ID, ErrSimulated))
	case h.spec.FailAll, h.spec.Fail.Match(r), job.Delivery <= h.spec.FailFirst:
		return failState(r), fmt.Errorf("reservation %d delivery %d: %w", r.Reservation.ID, job.Delivery, ErrSimulated)
	}
	if h.spec.Events {
		if err := job.Events.Loadlog(ctx, worker.StepEvent{Step: 1, Name: messages.LoadStatusCheck, Phase: messages.PhaseEnd, Info: "simulated", Duration: time.Since(start)}); err != nil {
			return res, err
		}
	}
	return successState(r), nil
}

func outcome(ctx context.Context, err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(context.Cause(ctx), worker.ErrCancelled):
		return "cancelled"
	case errors.Is(context.Cause(ctx), worker.ErrLeaseLost):
		return "leaselost"
	case errors.Is(context.Cause(ctx), worker.ErrShutdown):
		return "shutdown"
	}
	return "fail"
}

func (h *Handler) workTime() time.Duration {
	if h.spec.WorkMax <= h.spec.WorkMin {
		return h.spec.WorkMin
	}
	return h.spec.WorkMin + rand.N(h.spec.WorkMax-h.spec.WorkMin+1)
}

// successState is what the flow of the request's kind would produce.
func successState(r *messages.Request) messages.Result {
	var res messages.Result
	switch r.Kind {
	case messages.KindNew:
		res.RequestState, res.ComputerState = messages.StateReserved, messages.StateReserved
		res.IP, res.ImageID, res.ImageRevisionID = r.Computer.PrivateIP, r.Image.ID, r.Image.RevisionID
	case messages.KindReload:
		res.RequestState, res.ComputerState = messages.StateComplete, messages.StateAvailable
		res.IP, res.ImageID, res.ImageRevisionID = r.Computer.PrivateIP, r.Image.ID, r.Image.RevisionID
	case messages.KindReclaim:
		res.RequestState, res.ComputerState = messages.StateComplete, messages.StateAvailable
	case messages.KindImage:
		res.RequestState, res.ComputerState = messages.StateComplete, messages.StateReload
		res.ImageSizeMB = 1024
		if t := r.TargetImage; t != nil {
			res.NewImage = &messages.TargetImage{ImageID: t.ImageID, Name: t.Name, RevisionID: t.RevisionID, Revision: t.Revision}
		}
	case messages.KindReserved:
		res.RequestState, res.ComputerState = messages.StateInUse, messages.StateInUse
	}
	return res
}

func failState(r *messages.Request) messages.Result {
	if r.Kind == messages.KindImage {
		return messages.Result{RequestState: messages.StateMaintenance, ComputerState: messages.StateMaintenance}
	}
	return messages.Result{}
}
