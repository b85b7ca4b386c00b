package publisher

import "errors"

// ErrInvalidEvent wraps the validation error of an event the caller built wrongly; it
// is not retried.
var ErrInvalidEvent = errors.New("publisher: invalid event")

// ErrPublish wraps the error of a publish that did not store its message: its budget
// (or its attempts, or the caller's context) ran out first, or it was rejected
// (ErrRejected, wrapped as well).
var ErrPublish = errors.New("publisher: publish failed")

// ErrRejected is wrapped by the error of a publish that no retry can store, returned
// at once: the publish was denied (a permission violation reported on the connection,
// see WatchAsyncErrors), the message is larger than the server takes, no stream takes
// its subject, JetStream refused it for good (a 4xx API error), or the connection is
// closed for good or draining.
var ErrRejected = errors.New("publisher: rejected")

// IsInvalid reports whether err is an invalid-event error (a bug, never retried).
func IsInvalid(err error) bool { return errors.Is(err, ErrInvalidEvent) }

// IsPermanent reports whether retrying the publish that returned err cannot help: an
// invalid event or a rejected publish.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrInvalidEvent) || errors.Is(err, ErrRejected)
}
