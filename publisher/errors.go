package publisher

import "errors"

// ErrInvalidEvent wraps the validation error of an event the caller built wrongly; it
// is not retried.
var ErrInvalidEvent = errors.New("publisher: invalid event")

// ErrPublish wraps the last error of a publish whose retries were spent.
var ErrPublish = errors.New("publisher: publish failed")
