package worker

import (
	"errors"
	"fmt"
	"strings"
)

// Context causes of a job's cancellation: a handler reads them with context.Cause.
var (
	// ErrLeaseLost: the slot lease could not be renewed (expired, deleted or taken
	// over). The handler must stop touching the slot at once; it may not roll back.
	ErrLeaseLost = errors.New("slot lease lost")
	// ErrShutdown: the worker is shutting down and the grace period is over. The
	// handler must stop without rolling back: the request is handed back (Nak) and
	// another worker resumes it.
	ErrShutdown = errors.New("worker shutting down")
	// ErrCancelled: a later request for the same reservation (a reclaim) cancelled
	// this job. The handler rolls back; the job gets a failed result with error code
	// "cancelled" and is not retried.
	ErrCancelled = errors.New("job cancelled by a later request for the reservation")
)

// ErrLeaseUnconfirmed: a step's guard could not ask the stream leader whether the
// job still holds its slot's lease (past the lease's known validity); the job may not
// act on the slot and fails with a retryable error.
var ErrLeaseUnconfirmed = errors.New("slot lease could not be confirmed")

// ErrConfig is wrapped by New for an invalid Config.
var ErrConfig = errors.New("worker: invalid configuration")

// ErrSlotBusy is the reason a job gives up waiting for its slot after
// Config.BusySlotWait (the message is Nak'd with a delay).
var ErrSlotBusy = errors.New("slot busy")

// Error codes of failed results published by the pool.
const (
	CodeInvalid      = "invalid"
	CodeCancelled    = "cancelled"
	CodeFailed       = "failed"
	CodeMaxDeliver   = "max_deliveries"
	CodeHandlerPanic = "handler_panic"
	CodeBadResult    = "invalid_result"
)

type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// Permanent marks a handler error that can never succeed on retry (image missing,
// capture target exists, ...): the job fails at once with a failed result and the
// request is terminated, not redelivered. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err (or an error it wraps) was marked by Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// CodedError lets a handler choose the error_code of its failed result.
type CodedError struct {
	Code string // [A-Za-z0-9_.:-]{1,64}
	Err  error
}

func (e *CodedError) Error() string { return fmt.Sprintf("%s: %v", e.Code, e.Err) }
func (e *CodedError) Unwrap() error { return e.Err }

// ConsumerMismatchError is Run's error when the worker's AckWait or MaxDeliver differs
// from the workers' consumer's (the consumer is shared: every worker must agree with
// it). It wraps ErrConfig. It carries the consumer's whole settings, so that a command
// changing some of them can keep the others.
type ConsumerMismatchError struct {
	Consumer   string
	Mismatches []Mismatch
	// The consumer's settings, and the replicas of its stream.
	ConsumerAckWait    string
	ConsumerMaxDeliver int
	StreamReplicas     int
}

// Mismatch is one setting ("ack wait" or "max deliver") with the worker's value and
// the consumer's.
type Mismatch struct {
	Setting, Worker, Consumer string
}

func (e *ConsumerMismatchError) Error() string {
	parts := make([]string, len(e.Mismatches))
	for i, m := range e.Mismatches {
		parts[i] = fmt.Sprintf("%s %s does not match consumer %s's %s", m.Setting, m.Worker, e.Consumer, m.Consumer)
	}
	return fmt.Sprintf("%v: %s", ErrConfig, strings.Join(parts, "; "))
}

func (e *ConsumerMismatchError) Unwrap() error { return ErrConfig }
