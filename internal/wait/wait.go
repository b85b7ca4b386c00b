package wait

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Cond is polled by Until. It gets a context bounded by the wait's deadline.
type Cond func(ctx context.Context) (done bool, err error)

// Option tunes Until.
type Option func(*config)

type config struct {
	maxAttempts  int
	initialDelay time.Duration
	maxInterval  time.Duration // > 0: exponential backoff up to this
	jitter       float64       // in (0, 1): pauses shortened by up to this fraction
}

// MaxAttempts bounds the number of calls to the condition; n <= 0 means no limit other
// than the timeout (the default). Reaching it fails with ErrTimeout.
func MaxAttempts(n int) Option { return func(c *config) { c.maxAttempts = n } }

// InitialDelay waits d before the first attempt (default 0). The delay counts against
// the timeout.
func InitialDelay(d time.Duration) Option { return func(c *config) { c.initialDelay = d } }

// Backoff makes the pause between attempts grow: `every` after the first attempt,
// doubled after each further one, up to max (a max below `every` keeps `every`). Each
// pause then runs from the end of an attempt, not from its start, so a slow attempt
// does not eat its pause. Without Backoff (and Jitter) Until polls at a fixed rate.
func Backoff(max time.Duration) Option { return func(c *config) { c.maxInterval = max } }

// Jitter shortens every pause by a random fraction of at most f (0 < f < 1; other
// values mean no jitter), so that callers that failed together do not retry in step.
// Like Backoff, it makes pauses run from the end of an attempt.
func Jitter(f float64) Option {
	return func(c *config) {
		if f > 0 && f < 1 {
			c.jitter = f
		}
	}
}

// Retry calls op until it returns nil, for at most budget in all (every attempt's
// context ends with the budget): a time-bounded retry. op's error is the transient
// error; Permanent(err) stops at once. It is Until with op as the condition and takes
// the same options, typically Backoff and Jitter; it returns what Until returns.
func Retry(ctx context.Context, budget, every time.Duration, op func(ctx context.Context) error, opts ...Option) error {
	return Until(ctx, budget, every, func(ctx context.Context) (bool, error) {
		err := op(ctx)
		return err == nil, err
	}, opts...)
}

// Until calls cond until it reports done, and blocks until then. It calls cond at once
// (after the InitialDelay option, if any), then every `every`, for at most `timeout` in
// all (both must be > 0, else ErrInvalid). It returns nil when cond reported done; the
// unwrapped error when cond returned Permanent(err); otherwise an *Error wrapping
// ErrTimeout (timeout or MaxAttempts reached) or context.Cause(ctx) (the caller's
// context ended first), and the last error cond returned. It never returns nil
// without cond having reported done.
func Until(ctx context.Context, timeout, every time.Duration, cond Cond, opts ...Option) error {
	if timeout <= 0 || every <= 0 {
		return fmt.Errorf("%w: timeout %s, interval %s must be positive", ErrInvalid, timeout, every)
	}
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	start := time.Now()
	wctx, cancel := context.WithTimeoutCause(ctx, timeout, ErrTimeout)
	defer cancel()

	fail := func(attempts int, last error) error {
		reason := ErrTimeout
		if ctx.Err() != nil {
			reason = context.Cause(ctx)
		}
		return &Error{Attempts: attempts, Elapsed: time.Since(start), Timeout: timeout, Reason: reason, Last: last}
	}

	var last error
	if cfg.initialDelay > 0 {
		if !sleep(wctx, cfg.initialDelay) {
			return fail(0, nil)
		}
	}
	next, stop := pacer(every, cfg)
	defer stop()
	for attempts := 1; ; attempts++ {
		done, err := cond(wctx)
		if done && err == nil {
			return nil
		}
		if p := (permanent{}); errors.As(err, &p) {
			return p.err
		}
		if err != nil {
			last = err
		}
		if cfg.maxAttempts > 0 && attempts >= cfg.maxAttempts {
			return fail(attempts, last)
		}
		if !next(wctx) {
			return fail(attempts, last)
		}
	}
}

// pacer returns the pause between attempts: next blocks until the next attempt is due
// and reports false if ctx ended first; stop releases it. Plain: a ticker started
// before the first attempt (a fixed rate). With Backoff or Jitter: a timer from the end
// of each attempt, doubling up to the maximum, shortened by the jitter.
func pacer(every time.Duration, cfg config) (next func(ctx context.Context) bool, stop func()) {
	if cfg.maxInterval <= 0 && cfg.jitter == 0 {
		t := time.NewTicker(every)
		return func(ctx context.Context) bool {
			select {
			case <-ctx.Done():
				return false
			case <-t.C:
				return true
			}
		}, t.Stop
	}
	d := every
	return func(ctx context.Context) bool {
		pause := d
		if cfg.jitter > 0 {
			pause -= time.Duration(rand.Float64() * cfg.jitter * float64(pause))
		}
		if cfg.maxInterval > 0 {
			d = min(2*d, max(cfg.maxInterval, every))
		}
		return sleep(ctx, pause)
	}, func() {}
}

// Sleep blocks for d or until ctx ends; it returns context.Cause(ctx) if ctx ended
// first, else nil.
func Sleep(ctx context.Context, d time.Duration) error {
	if !sleep(ctx, d) {
		return context.Cause(ctx)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
