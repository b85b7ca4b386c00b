package wait_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vclq/vclq/internal/wait"
)

var errFlaky = errors.New("not yet")

func TestUntil(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name         string
		timeout      time.Duration
		every        time.Duration
		opts         []wait.Option
		okAfter      int32 // condition holds from this attempt on; 0 never
		condErr      error // returned while not done
		cancel       bool  // cancel the caller's context up front
		wantErr      error
		wantAttempts int // checked when > 0 and an *wait.Error is returned
		maxElapsed   time.Duration
	}{
		{name: "immediately", timeout: time.Second, every: time.Millisecond, okAfter: 1},
		{name: "third attempt", timeout: time.Second, every: time.Millisecond, okAfter: 3},
		{name: "timeout", timeout: 50 * time.Millisecond, every: 10 * time.Millisecond, wantErr: wait.ErrTimeout, maxElapsed: time.Second},
		{name: "timeout keeps last error", timeout: 30 * time.Millisecond, every: 5 * time.Millisecond, condErr: errFlaky, wantErr: errFlaky},
		{name: "tiny timeout", timeout: time.Nanosecond, every: time.Hour, wantErr: wait.ErrTimeout, maxElapsed: 500 * time.Millisecond},
		{name: "attempt limit", timeout: time.Minute, every: time.Millisecond, opts: []wait.Option{wait.MaxAttempts(4)}, wantErr: wait.ErrTimeout, wantAttempts: 4, maxElapsed: time.Second},
		{name: "permanent", timeout: time.Minute, every: time.Millisecond, condErr: wait.Permanent(errBoom), wantErr: errBoom, maxElapsed: time.Second},
		{name: "cancelled", timeout: time.Minute, every: time.Hour, cancel: true, wantErr: context.Canceled, maxElapsed: time.Second},
		{name: "initial delay counts", timeout: 20 * time.Millisecond, every: time.Millisecond, opts: []wait.Option{wait.InitialDelay(time.Hour)}, okAfter: 1, wantErr: wait.ErrTimeout, wantAttempts: 0, maxElapsed: time.Second},
		{name: "zero timeout invalid", timeout: 0, every: time.Millisecond, okAfter: 1, wantErr: wait.ErrInvalid},
		{name: "zero interval invalid", timeout: time.Second, every: 0, okAfter: 1, wantErr: wait.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tc.cancel {
				cancel()
			}
			var n atomic.Int32
			start := time.Now()
			err := wait.Until(ctx, tc.timeout, tc.every, func(ctx context.Context) (bool, error) {
				i := n.Add(1)
				if tc.okAfter > 0 && i >= tc.okAfter {
					return true, nil
				}
				return false, tc.condErr
			}, tc.opts...)
			elapsed := time.Since(start)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Until = %v, want nil", err)
				}
				if got := n.Load(); got != tc.okAfter {
					t.Fatalf("condition called %d times, want %d", got, tc.okAfter)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Until = %v, want %v", err, tc.wantErr)
			}
			if tc.maxElapsed > 0 && elapsed > tc.maxElapsed {
				t.Fatalf("Until took %s, more than %s", elapsed, tc.maxElapsed)
			}
			var we *wait.Error
			if errors.As(err, &we) {
				if int(n.Load()) != we.Attempts {
					t.Fatalf("Error.Attempts = %d, condition called %d times", we.Attempts, n.Load())
				}
				if tc.wantAttempts > 0 && we.Attempts != tc.wantAttempts {
					t.Fatalf("Error.Attempts = %d, want %d", we.Attempts, tc.wantAttempts)
				}
				if !strings.Contains(err.Error(), "attempts in") {
					t.Fatalf("error %q does not state attempts and elapsed time", err)
				}
			}
		})
	}
}

// A cancel with a cause while the wait sleeps returns promptly with that cause.
func TestUntilCancelCause(t *testing.T) {
	errLease := errors.New("lease lost")
	ctx, cancel := context.WithCancelCause(t.Context())
	go func() { time.Sleep(20 * time.Millisecond); cancel(errLease) }()
	start := time.Now()
	err := wait.Until(ctx, time.Minute, 10*time.Second, func(context.Context) (bool, error) { return false, nil })
	if !errors.Is(err, errLease) || errors.Is(err, wait.ErrTimeout) {
		t.Fatalf("Until = %v, want the cancel cause and not ErrTimeout", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("cancel took %s to be noticed", time.Since(start))
	}
}

func TestSleep(t *testing.T) {
	if err := wait.Sleep(t.Context(), time.Millisecond); err != nil {
		t.Fatalf("Sleep = %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := wait.Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep on cancelled ctx = %v", err)
	}
}

// With Backoff the pauses run from the end of each attempt, double, and stop growing
// at the maximum; Jitter only ever shortens them.
func TestBackoff(t *testing.T) {
	const every = 20 * time.Millisecond
	tests := []struct {
		name   string
		opts   []wait.Option
		want   []time.Duration // nominal pauses after attempts 1, 2, ...
		jitter float64
	}{
		{name: "doubles up to the maximum", opts: []wait.Option{wait.Backoff(80 * time.Millisecond)},
			want: []time.Duration{20, 40, 80, 80, 80}},
		{name: "maximum below every keeps every", opts: []wait.Option{wait.Backoff(time.Millisecond)},
			want: []time.Duration{20, 20, 20}},
		{name: "jitter shortens", opts: []wait.Option{wait.Backoff(80 * time.Millisecond), wait.Jitter(0.5)},
			want: []time.Duration{20, 40, 80, 80}, jitter: 0.5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ends, starts []time.Time
			attempts := len(tc.want) + 1
			err := wait.Until(t.Context(), 10*time.Second, every, func(context.Context) (bool, error) {
				starts = append(starts, time.Now())
				time.Sleep(5 * time.Millisecond) // a slow attempt: the pause must come after it
				ends = append(ends, time.Now())
				return false, errFlaky
			}, append(tc.opts, wait.MaxAttempts(attempts))...)
			if !errors.Is(err, wait.ErrTimeout) || !errors.Is(err, errFlaky) {
				t.Fatalf("Until = %v, want the attempt limit with the last error", err)
			}
			for i, w := range tc.want {
				if i+1 >= len(starts) {
					t.Fatalf("only %d attempts", len(starts))
				}
				nominal := w * time.Millisecond
				got := starts[i+1].Sub(ends[i])
				low := time.Duration(float64(nominal)*(1-tc.jitter)) - 2*time.Millisecond
				if got < low || got > nominal+40*time.Millisecond {
					t.Errorf("pause %d: %s, want %s (jitter %.1f)", i+1, got, nominal, tc.jitter)
				}
				t.Logf("pause %d: %s (nominal %s)", i+1, got.Round(time.Millisecond), nominal)
			}
		})
	}
}

// Retry is a time-bounded retry: nil once op succeeds, the budget's ErrTimeout with
// op's last error when it never does, op's error at once when it is Permanent.
func TestRetry(t *testing.T) {
	errDown := errors.New("store down")
	errDenied := errors.New("denied")
	tests := []struct {
		name       string
		budget     time.Duration
		okAfter    int32 // op succeeds from this call on; 0 never
		opErr      error
		wantErr    []error
		maxElapsed time.Duration
	}{
		{name: "recovers within the budget", budget: 5 * time.Second, okAfter: 4, opErr: errDown},
		{name: "budget spent", budget: 150 * time.Millisecond, opErr: errDown, wantErr: []error{wait.ErrTimeout, errDown}, maxElapsed: time.Second},
		{name: "permanent stops at once", budget: time.Minute, opErr: wait.Permanent(errDenied), wantErr: []error{errDenied}, maxElapsed: 100 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int32
			var deadlineSeen atomic.Bool
			start := time.Now()
			err := wait.Retry(t.Context(), tc.budget, 5*time.Millisecond, func(ctx context.Context) error {
				if d, ok := ctx.Deadline(); ok && d.Sub(start) <= tc.budget+time.Millisecond {
					deadlineSeen.Store(true)
				}
				if i := n.Add(1); tc.okAfter > 0 && i >= tc.okAfter {
					return nil
				}
				return tc.opErr
			}, wait.Backoff(40*time.Millisecond), wait.Jitter(0.2))
			elapsed := time.Since(start)
			t.Logf("%d calls in %s: %v", n.Load(), elapsed.Round(time.Millisecond), err)
			if !deadlineSeen.Load() {
				t.Error("op's context does not end with the budget")
			}
			if tc.wantErr == nil {
				if err != nil || n.Load() != tc.okAfter {
					t.Fatalf("Retry = %v after %d calls, want nil after %d", err, n.Load(), tc.okAfter)
				}
				return
			}
			for _, w := range tc.wantErr {
				if !errors.Is(err, w) {
					t.Errorf("Retry = %v, want it to wrap %v", err, w)
				}
			}
			if elapsed > tc.maxElapsed {
				t.Errorf("Retry took %s, more than %s", elapsed, tc.maxElapsed)
			}
		})
	}
}
