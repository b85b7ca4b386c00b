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
	maxBackoff   time.Duration
}

// MaxAttempts bounds the number of calls to the condition; n <= 0 means no limit other
// than the timeout (the default). Reaching it fails with ErrTimeout.
func MaxAttempts(n int) Option { return func(c *config) { c.maxAttempts = n } }

// InitialDelay waits d before the first attempt (default 0). The delay counts against
// the timeout.
func InitialDelay(d time.Duration) Option { return func(c *config) { c.initialDelay = d } }

// Backoff makes the pause between attempts grow: it starts at Until's interval and
// doubles after every attempt up to max, and each pause is drawn at random from the
// upper half of its range ([d/2, d]) so that callers racing for the same thing (say,
// several servers creating one stream) spread out. A max not above the interval
// keeps the pause at the interval (still jittered). Without Backoff, Until polls at
// its fixed interval.
func Backoff(max time.Duration) Option { return func(c *config) { c.maxBackoff = max } }

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
	pause := every
	t := time.NewTicker(every)
	defer t.Stop()
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
		if cfg.maxBackoff > 0 {
			if !sleep(wctx, jittered(pause)) {
				return fail(attempts, last)
			}
			pause = min(2*pause, max(cfg.maxBackoff, every))
			continue
		}
		select {
		case <-wctx.Done():
			return fail(attempts, last)
		case <-t.C:
		}
	}
}

// jittered is a random duration in [d/2, d].
func jittered(d time.Duration) time.Duration {
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + rand.N(d-half+1)
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
