package messages

import "errors"

// ErrInvalid is wrapped by every decoding and validation error: the message can never
// be processed, however often it is retried.
var ErrInvalid = errors.New("invalid message")

// ErrTooLarge is wrapped (with ErrInvalid) when a payload exceeds MaxMessageSize.
var ErrTooLarge = errors.New("message too large")

// ErrSchema is wrapped (with ErrInvalid) when the schema version is not SchemaVersion.
var ErrSchema = errors.New("unsupported schema version")
