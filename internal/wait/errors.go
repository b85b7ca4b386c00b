package wait

import (
	"errors"
	"fmt"
	"time"
)

// ErrTimeout is wrapped by the error Until returns when its timeout or attempt limit
// was reached before the condition held.
var ErrTimeout = errors.New("wait: timed out")

// ErrInvalid is returned by Until for a non-positive timeout or interval.
var ErrInvalid = errors.New("wait: invalid arguments")

// Error is the error Until returns when it gives up. It wraps ErrTimeout (timeout or
// attempt limit), or the context's cause (cancelled), and the condition's last
// transient error, if any. Its message says how many attempts were made and how long
// the wait lasted.
type Error struct {
	// Attempts is the number of times the condition was called.
	Attempts int
	// Elapsed is the time from the call of Until to giving up.
	Elapsed time.Duration
	// Timeout is the configured timeout.
	Timeout time.Duration
	// Reason is ErrTimeout, or context.Cause of the caller's context.
	Reason error
	// Last is the condition's last transient (or permanent) error; may be nil.
	Last error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%v after %d attempts in %s (timeout %s)",
		e.Reason, e.Attempts, e.Elapsed.Round(time.Millisecond), e.Timeout)
	if e.Last != nil {
		msg += ": last error: " + e.Last.Error()
	}
	return msg
}

// Unwrap returns the reason and the last error, for errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	if e.Last == nil {
		return []error{e.Reason}
	}
	return []error{e.Reason, e.Last}
}

// permanent marks a condition error that ends the wait at once.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent wraps err so that a condition returning it ends Until immediately; Until
// then returns err itself (unwrapped from the marker), not an *Error. Permanent(nil)
// is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}
