package flow

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/publisher"
	"github.com/vclq/vclq/worker"
)

// Step is one named unit of a state flow. Its name is its VCL loadlog name. Run must
// be idempotent (a redelivered request runs it again) and honour ctx.
type Step interface {
	Name() string
	Run(ctx context.Context, f *Flow) error
}

// Cleaner is a step that leaves something behind when a later step fails or the job
// is cancelled. Cleanup runs in reverse order, only for steps that started, on a fresh
// bounded context.
type Cleaner interface {
	Cleanup(ctx context.Context, f *Flow)
}

// cleanupTimeout bounds all cleanups of one flow together.
const cleanupTimeout = 5 * time.Minute

// runner runs steps of one job in order and emits their loadlog events: begin when a
// step starts, end (with its duration and any detail the step reported) or fail.
// Step numbers continue across calls, so a flow that decides its next steps from an
// earlier one's outcome reads as one numbered list.
//
// Events are published in order by a goroutine of the runner, so a step never waits
// for the event store. Each batch is retried for the sink's publish budget; once one
// cannot be stored, no later event is sent (the job's events stay gapless, in order)
// and flush reports it. The handler returns only after flush, and fails (retryably)
// unless every event was stored, so a job's result is stored only after all of its
// loadlog events.
type runner struct {
	events worker.EventSink
	// guard is the job's (worker.Job.Guard): asked before every step and every
	// cleanup, so that a job that lost its slot starts nothing more on it. Optional.
	guard   func(ctx context.Context) error
	log     zerolog.Logger
	budget  time.Duration
	grace   time.Duration // flushGrace
	next    int
	started []startedStep

	mu      sync.Mutex
	queue   chan worker.StepEvent
	closed  bool
	emitted int // events queued
	done    chan struct{}

	stored   atomic.Int64  // events stored
	progress chan struct{} // a batch was stored (1 buffered)

	failMu  sync.Mutex
	failure error // why events could not be stored; nothing is sent after it
}

// eventQueue bounds the events waiting to be published; a full queue makes the flow
// wait (back-pressure) rather than drop an event.
const eventQueue = 256

// budgeted is an event sink that says how long it keeps trying to store an event
// (the worker's: its publisher's budget, publisher.Options.Budget).
type budgeted interface {
	PublishBudget() time.Duration
}

// flushGrace is how much longer than the publish budget flush waits for a batch.
const flushGrace = 5 * time.Second

// storeRetry and storeMaxRetry pace the runner's retries of a sink call that failed
// before its budget was spent (the worker's sink retries inside the call already).
const (
	storeRetry    = 100 * time.Millisecond
	storeMaxRetry = 2 * time.Second
)

// errFlushTimeout: flush stopped waiting for the publishing goroutine.
var errFlushTimeout = errors.New("loadlog publishing made no progress")

func newRunner(events worker.EventSink, log zerolog.Logger) *runner {
	r := &runner{events: events, log: log, budget: publisher.DefaultBudget, grace: flushGrace,
		queue: make(chan worker.StepEvent, eventQueue), done: make(chan struct{}), progress: make(chan struct{}, 1)}
	if b, ok := events.(budgeted); ok && b.PublishBudget() > 0 {
		r.budget = b.PublishBudget()
	}
	go r.publish()
	return r
}

// batchSink is an event sink that can store several events in order at once (the
// worker's: one round trip for the batch).
type batchSink interface {
	LoadlogBatch(ctx context.Context, evs []worker.StepEvent) error
}

// maxBatch bounds the events published together.
const maxBatch = 32

// publish stores the queued events in order: one at a time, or, when the sink takes
// batches, everything queued so far at once. Once a batch could not be stored, the
// rest are not sent (flush reports them).
func (r *runner) publish() {
	defer close(r.done)
	bs, batched := r.events.(batchSink)
	batch := make([]worker.StepEvent, 0, maxBatch)
	for ev := range r.queue {
		batch = append(batch[:0], ev)
		for batched && len(batch) < maxBatch {
			select {
			case more, ok := <-r.queue:
				if ok {
					batch = append(batch, more)
					continue
				}
			default:
			}
			break
		}
		if r.failed() != nil {
			continue // drained, not sent: a later event stored before an earlier one would read as a gap
		}
		if err := r.store(bs, batch); err != nil {
			r.fail(fmt.Errorf("loadlog events from step %d %s %s on: %w", ev.Step, ev.Name, ev.Phase, err))
			r.log.Error().Err(err).Int("step", ev.Step).Str("name", ev.Name).Str("phase", string(ev.Phase)).Int("events", len(batch)).
				Dur("budget", r.budget).Msg("loadlog events not stored: no later event is sent, the job fails")
			continue
		}
		r.stored.Add(int64(len(batch)))
		select {
		case r.progress <- struct{}{}:
		default:
		}
	}
}

// store stores batch (through the batch sink if bs is not nil, else its one event),
// retrying for the publish budget; a sink error that no retry fixes
// (publisher.IsPermanent) stops at once. Events of a cancelled job are still
// recorded: the job's context is not used.
func (r *runner) store(bs batchSink, batch []worker.StepEvent) error {
	return wait.Retry(context.Background(), r.budget, storeRetry, func(ctx context.Context) error {
		var err error
		if bs != nil {
			err = bs.LoadlogBatch(ctx, batch)
		} else {
			err = r.events.Loadlog(ctx, batch[0])
		}
		if publisher.IsPermanent(err) {
			return wait.Permanent(err)
		}
		return err
	}, wait.Backoff(storeMaxRetry), wait.Jitter(0.2))
}

func (r *runner) fail(err error) {
	r.failMu.Lock()
	defer r.failMu.Unlock()
	if r.failure == nil {
		r.failure = err
	}
}

func (r *runner) failed() error {
	r.failMu.Lock()
	defer r.failMu.Unlock()
	return r.failure
}

// flush ends the job's events and waits until every one is stored: it returns nil
// then, else an error saying how many were not stored and why. It waits as long as
// the publishing goroutine makes progress, and at most the publish budget (plus
// flushGrace) for any one batch; when it gives up, nothing more is sent.
func (r *runner) flush() error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.queue)
	}
	emitted := r.emitted
	r.mu.Unlock()
	idle := r.budget + r.grace
	t := time.NewTimer(idle)
	defer t.Stop()
	for {
		select {
		case <-r.done:
			err := r.failed()
			if err == nil {
				return nil
			}
			return fmt.Errorf("%d of %d loadlog events not stored: %w", emitted-int(r.stored.Load()), emitted, err)
		case <-r.progress:
			t.Reset(idle)
		case <-t.C:
			r.fail(fmt.Errorf("%w for %s", errFlushTimeout, idle))
			return fmt.Errorf("%d of %d loadlog events not stored: %w", emitted-int(r.stored.Load()), emitted, r.failed())
		}
	}
}

type startedStep struct {
	step Step
	n    int
}

// run runs steps until one fails or ctx ends.
func (r *runner) run(ctx context.Context, f *Flow, steps ...Step) error {
	for _, s := range steps {
		if err := context.Cause(ctx); ctx.Err() != nil {
			return fmt.Errorf("before step %s: %w", s.Name(), err)
		}
		if err := r.mayAct(ctx); err != nil {
			return fmt.Errorf("before step %s: %w", s.Name(), err)
		}
		r.next++
		n := r.next
		r.started = append(r.started, startedStep{s, n})
		f.enter(n, s.Name())
		r.emit(ctx, n, s.Name(), messages.PhaseBegin, "", 0)
		start := time.Now()
		err := s.Run(ctx, f)
		d := time.Since(start)
		if err != nil {
			r.emit(ctx, n, s.Name(), messages.PhaseFail, truncate(err.Error()), d)
			r.log.Warn().Err(err).Str("step", s.Name()).Dur("took", d).Msg("step failed")
			return fmt.Errorf("step %s: %w", s.Name(), err)
		}
		_, detail := f.current()
		r.emit(ctx, n, s.Name(), messages.PhaseEnd, detail, d)
		r.log.Debug().Str("step", s.Name()).Dur("took", d).Msg("step done")
	}
	return nil
}

// mayAct asks the job's guard whether it may still act on its slot.
func (r *runner) mayAct(ctx context.Context) error {
	if r.guard == nil {
		return nil
	}
	return r.guard(ctx)
}

// note emits a standalone loadlog row (a VCL name such as failed, loadimagefailed,
// WARNING or info) numbered as the next step.
func (r *runner) note(ctx context.Context, name, info string) {
	r.next++
	r.emit(ctx, r.next, name, messages.PhaseInfo, truncate(info), 0)
}

// cleanup runs the cleanups of started steps in reverse order on a context detached
// from the job's (which is usually dead by now), bounded by cleanupTimeout.
func (r *runner) cleanup(ctx context.Context, f *Flow) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	for i := len(r.started) - 1; i >= 0; i-- {
		if c, ok := r.started[i].step.(Cleaner); ok {
			if err := r.mayAct(cctx); err != nil {
				r.log.Warn().Err(err).Str("step", r.started[i].step.Name()).Msg("not rolling back: the job may no longer act on the slot")
				break
			}
			r.log.Info().Str("step", r.started[i].step.Name()).Msg("rolling back")
			c.Cleanup(cctx, f)
		}
	}
	r.started = nil
}

// emit queues an event. Events of a cancelled job are still recorded: the publishing
// goroutine does not use the job's context.
func (r *runner) emit(_ context.Context, n int, name string, phase messages.Phase, info string, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		r.log.Error().Str("step", name).Str("phase", string(phase)).Msg("loadlog event after the job ended: dropped")
		return
	}
	r.emitted++
	// The event carries its moment: it may be published later, behind others.
	r.queue <- worker.StepEvent{Step: n, Name: name, Phase: phase, Info: info, Duration: d, At: time.Now()}
}

func truncate(s string) string {
	if len(s) > 1000 {
		return s[:1000] + "..."
	}
	return s
}
