package bridge

import "errors"

// ErrConfig is wrapped by every configuration error of New.
var ErrConfig = errors.New("bridge: invalid configuration")

// ErrSchema is wrapped when the database lacks a table, state or loadstate the bridge
// needs.
var ErrSchema = errors.New("bridge: database schema")

// ErrSealKey is wrapped when a seal key cannot be read or a sealed password cannot be
// opened with it.
var ErrSealKey = errors.New("bridge: seal key")

// errBadRow marks a row that can never become a valid message: it is failed in the
// database with the reason, not retried.
var errBadRow = errors.New("row cannot be turned into a valid request")
