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

// With Backoff the pauses grow from the interval up to the maximum, each within
// [d/2, d]; the timeout and attempt limit still bound the wait.
func TestUntilBackoff(t *testing.T) {
	var stamps []time.Time
	err := wait.Until(t.Context(), 10*time.Second, 20*time.Millisecond, func(context.Context) (bool, error) {
		stamps = append(stamps, time.Now())
		return false, errFlaky
	}, wait.Backoff(80*time.Millisecond), wait.MaxAttempts(6))
	if !errors.Is(err, wait.ErrTimeout) || !errors.Is(err, errFlaky) {
		t.Fatalf("Until = %v, want ErrTimeout with the last error", err)
	}
	if len(stamps) != 6 {
		t.Fatalf("condition called %d times, want 6", len(stamps))
	}
	// Nominal pauses 20, 40, 80, 80, 80 ms; each is drawn from [d/2, d].
	nominal := []time.Duration{20, 40, 80, 80, 80}
	for i, d := range nominal {
		d *= time.Millisecond
		got := stamps[i+1].Sub(stamps[i])
		t.Logf("pause %d: %s (nominal %s)", i+1, got.Round(time.Millisecond), d)
		if got < d/2 || got > d+50*time.Millisecond {
			t.Errorf("pause %d = %s, want within [%s, %s] (+50ms scheduling slack)", i+1, got, d/2, d)
		}
	}
	start := time.Now()
	err = wait.Until(t.Context(), 100*time.Millisecond, 10*time.Millisecond, func(context.Context) (bool, error) {
		return false, nil
	}, wait.Backoff(time.Hour))
	if !errors.Is(err, wait.ErrTimeout) || time.Since(start) > 2*time.Second {
		t.Fatalf("backoff past the timeout: %v after %s", err, time.Since(start))
	}
}
