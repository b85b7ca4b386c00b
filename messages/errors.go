package messages

import (
	"errors"
	"strings"
)

// ErrInvalid is wrapped by every decoding and validation error: the message can never
// be processed, however often it is retried.
var ErrInvalid = errors.New("invalid message")

// ErrTooLarge is wrapped (with ErrInvalid) when a payload exceeds MaxMessageSize.
var ErrTooLarge = errors.New("message too large")

// ErrSchema is wrapped (with ErrInvalid) when the schema version is not SchemaVersion.
var ErrSchema = errors.New("unsupported schema version")

// invalidError is a message's validation problems as one error: ErrInvalid's text
// once, then the problems separated by "; ", on one line (it goes into logs, results
// and dead-letter headers). It wraps ErrInvalid.
type invalidError struct{ problems []string }

func (e *invalidError) Error() string {
	return ErrInvalid.Error() + ": " + strings.Join(e.problems, "; ")
}

func (e *invalidError) Unwrap() error { return ErrInvalid }
