package worker

import (
	"context"
	"time"

	"github.com/vclq/vclq/messages"
)

// Job is one delivery of a validated request.
type Job struct {
	Request *messages.Request
	// Seq is the request's stream sequence in VCL_REQUESTS (stable across redeliveries).
	Seq uint64
	// Delivery is the 1-based delivery count; MaxDeliver is the budget.
	Delivery   int
	MaxDeliver int
	// Fence is the slot lease revision at claim time: the fencing token of this job.
	// A later holder of the slot always has a larger revision.
	Fence uint64
	// Guard returns nil while the job may still act on its slot, and an error
	// (ErrLeaseLost, ErrLeaseUnconfirmed) once it may not: the lease was lost, or its
	// validity cannot be confirmed (after a pause of the process, say). Call it right
	// before every step that has a side effect on the slot, rollbacks included; it
	// answers from the local clock while the lease is known to be valid.
	Guard func(ctx context.Context) error
	// Events publishes loadlog events for this job (deterministic ids).
	Events EventSink
	// Worker is the id of the worker running the job.
	Worker string
}

// EventSink publishes a job's loadlog events. It blocks until the event is stored
// (bounded retries) and returns the publish error.
type EventSink interface {
	Loadlog(ctx context.Context, e StepEvent) error
}

// StepEvent is one loadlog event of a job.
type StepEvent struct {
	// Step is the step's position in the flow (from 1): with the request sequence it
	// makes the event's dedup id, so a re-run step of a redelivered request does not
	// produce a duplicate event.
	Step  int
	Name  string // a computerloadstate name
	Phase messages.Phase
	Info  string
	// Duration is the step's, for end and fail.
	Duration time.Duration
	// At is when it happened: the step's start, end or failure, which a sink that
	// publishes later must keep. Zero means now.
	At time.Time
}

// Handler runs one job. It returns the result fields it produced (next states, IP,
// image ids/size, sealed passwords...); the pool fills the envelope (ids, kind,
// outcome, worker, time, seq, deliveries) and publishes exactly one result per final
// outcome.
//
// An error wrapped with Permanent fails at once (no redelivery); other errors are
// retried until MaxDeliver. On error the returned Result's RequestState and
// ComputerState, if set, are used for the failed result (e.g. image → maintenance);
// the default is failed/failed. A *CodedError chooses the error code.
//
// The context ends with a cause (context.Cause): ErrCancelled (roll back), ErrLeaseLost
// (stop touching the slot) or ErrShutdown (stop, do not roll back).
type Handler interface {
	Handle(ctx context.Context, job *Job) (messages.Result, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, job *Job) (messages.Result, error)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, job *Job) (messages.Result, error) {
	return f(ctx, job)
}
