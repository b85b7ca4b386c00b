package flow

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vclq/vclq/messages"
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
// for the event store; flush waits (bounded) until all are stored, and the handler
// returns only then, so a job's result is always stored after its loadlog events.
type runner struct {
	events worker.EventSink
	// guard is the job's (worker.Job.Guard): asked before every step and every
	// cleanup, so that a job that lost its slot starts nothing more on it. Optional.
	guard   func(ctx context.Context) error
	log     zerolog.Logger
	next    int
	started []startedStep

	mu     sync.Mutex
	queue  chan worker.StepEvent
	closed bool
	done   chan struct{}
}

// eventQueue bounds the events waiting to be published; a full queue makes the flow
// wait (back-pressure) rather than drop an event.
const eventQueue = 256

// flushTimeout bounds the wait for the last events of a job.
const flushTimeout = 30 * time.Second

func newRunner(events worker.EventSink, log zerolog.Logger) *runner {
	r := &runner{events: events, log: log, queue: make(chan worker.StepEvent, eventQueue), done: make(chan struct{})}
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
// batches, everything queued so far at once.
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
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		var err error
		if batched {
			err = bs.LoadlogBatch(ctx, batch)
		} else {
			err = r.events.Loadlog(ctx, ev)
		}
		cancel()
		if err != nil && !errors.Is(err, context.Canceled) {
			r.log.Warn().Err(err).Str("step", ev.Name).Str("phase", string(ev.Phase)).Int("events", len(batch)).Msg("loadlog events not published")
		}
	}
}

// flush waits until every queued event is stored (or flushTimeout passes); later
// events are dropped with a log line.
func (r *runner) flush() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.queue)
	}
	r.mu.Unlock()
	select {
	case <-r.done:
	case <-time.After(flushTimeout):
		r.log.Error().Dur("waited", flushTimeout).Msg("loadlog events still unpublished at the end of the job")
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
		r.log.Warn().Str("step", name).Str("phase", string(phase)).Msg("loadlog event after the job ended: dropped")
		return
	}
	// The event carries its moment: it may be published later, behind others.
	r.queue <- worker.StepEvent{Step: n, Name: name, Phase: phase, Info: info, Duration: d, At: time.Now()}
}

func truncate(s string) string {
	if len(s) > 1000 {
		return s[:1000] + "..."
	}
	return s
}
