package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vclq/vclq/health"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/metrics"
)

// defaultQueueInfoInterval is how often the consumer info is refreshed for the queue
// gauges and readiness (Config.QueueInfoInterval).
const defaultQueueInfoInterval = 5 * time.Second

// readiness is what /readyz reports of a pool.
type readiness struct {
	bound atomic.Bool // setup done: consumer, streams and buckets bound, config checked

	mu     sync.Mutex
	infoAt time.Time // last consumer info (success or failure)
	err    error     // its error, or a configuration mismatch
}

func (r *readiness) set(err error) {
	r.mu.Lock()
	r.infoAt, r.err = time.Now(), err
	r.mu.Unlock()
}

func (r *readiness) get() (time.Time, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.infoAt, r.err
}

// metrics is the pool's metrics (nil: none; every method is nil-safe).
func (p *Pool) metrics() *metrics.Worker { return p.cfg.Metrics }

// publishResult publishes a job's result and counts it.
func (p *Pool) publishResult(ctx context.Context, j *job, r *messages.Result) error {
	if err := p.pub.Result(ctx, r); err != nil {
		return err
	}
	p.metrics().Result(r.Kind, r.Outcome)
	switch r.Outcome {
	case messages.OutcomeSuccess:
		j.outcome = metrics.JobSuccess
	case messages.OutcomeRejected:
		j.outcome = metrics.JobRejected
	default:
		j.outcome = metrics.JobFailed
	}
	return nil
}

// observeJob observes a delivery's duration when process returns.
func (p *Pool) observeJob(j *job) {
	kind := messages.Kind("")
	if j.req != nil {
		kind = j.req.Kind
	} else if k, ok := messages.KindFromSubject(j.msg.Subject()); ok {
		kind = k
	}
	outcome := j.outcome
	if outcome == "" {
		outcome = metrics.JobHandedBack
	}
	p.metrics().JobDone(kind, outcome, time.Since(j.since))
}

// observeSteps observes the durations of stored end and fail events.
func (e *jobEvents) observeSteps(evs ...StepEvent) {
	m := e.p.metrics()
	if m == nil {
		return
	}
	for _, ev := range evs {
		m.Step(e.j.req.Kind, ev.Name, ev.Phase, ev.Duration)
	}
}

// refreshQueueInfo reads the worker consumer's info every Config.QueueInfoInterval
// until ctx ends: the queue gauges and readiness use it, so neither a scrape nor a
// probe waits for NATS.
func (p *Pool) refreshQueueInfo(ctx context.Context) {
	t := time.NewTicker(p.cfg.QueueInfoInterval)
	defer t.Stop()
	for {
		_ = p.consumerInfo(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// consumerInfo reads the consumer's info (bounded), updates the queue gauges and
// readiness, and returns the error readiness reports.
func (p *Pool) consumerInfo(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, min(p.cfg.QueueInfoInterval, health.DefaultTimeout))
	defer cancel()
	ci, err := p.cons.Info(ctx)
	if err == nil {
		p.metrics().QueueInfo(ci.NumPending, uint64(ci.NumAckPending), uint64(ci.NumRedelivered))
		if ci.Config.AckWait != p.cfg.AckWait || ci.Config.MaxDeliver != p.cfg.MaxDeliver {
			err = fmt.Errorf("%w: consumer %s now has ack wait %s and max deliver %d, this worker runs with %s and %d (restart it)",
				ErrConfig, messages.ConsumerWorkers, ci.Config.AckWait, ci.Config.MaxDeliver, p.cfg.AckWait, p.cfg.MaxDeliver)
		}
	} else {
		err = fmt.Errorf("consumer %s on %s: %w", messages.ConsumerWorkers, messages.StreamRequests, err)
	}
	p.ready.set(err)
	return err
}

// HealthChecks are the pool's readiness checks: NATS connected, the worker consumer
// bound and answering, the configuration matching it. Until Run has set the pool up
// every check fails ("starting"). Readiness uses the background consumer info while
// it is fresh and asks the server again (bounded by the check's context) otherwise.
func (p *Pool) HealthChecks() []health.Check {
	errStarting := errors.New("starting: consumer not bound yet")
	return []health.Check{
		{Name: "nats", Fn: func(context.Context) error {
			if !p.nc.IsConnected() {
				return fmt.Errorf("not connected (%s)", p.nc.Status())
			}
			return nil
		}},
		{Name: "consumer", Fn: func(ctx context.Context) error {
			if !p.ready.bound.Load() {
				return errStarting
			}
			p.mu.Lock()
			draining := p.draining
			p.mu.Unlock()
			if draining {
				return errors.New("shutting down: no more pulls")
			}
			at, err := p.ready.get()
			if time.Since(at) > 2*p.cfg.QueueInfoInterval || (err != nil && !errors.Is(err, ErrConfig)) {
				err = p.consumerInfo(ctx)
			}
			if errors.Is(err, ErrConfig) {
				return nil // reported by the config check
			}
			return err
		}},
		{Name: "config", Fn: func(context.Context) error {
			if !p.ready.bound.Load() {
				return errStarting
			}
			if _, err := p.ready.get(); errors.Is(err, ErrConfig) {
				return err
			}
			return nil
		}},
	}
}
