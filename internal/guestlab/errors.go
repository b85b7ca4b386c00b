package guestlab

import "errors"

// ErrUnavailable is returned by Check and New when the lab cannot run here (not root,
// or a tool is missing); the message says which.
var ErrUnavailable = errors.New("guestlab: unavailable")

// ErrNoSubnet is returned by New when no candidate subnet is free on this host, or the
// configured one overlaps an address or route of the host.
var ErrNoSubnet = errors.New("guestlab: no free subnet")

// ErrFull is returned when a lab's subnet has no address left.
var ErrFull = errors.New("guestlab: subnet full")

// ErrNotRunning is returned by Guest.Exec and Guest.InitPID when the guest is stopped.
var ErrNotRunning = errors.New("guestlab: guest not running")

// ErrClosed is returned by a lab's methods after Close.
var ErrClosed = errors.New("guestlab: lab closed")

// ErrInvalidName is returned for a guest or client name that is not 1-20 characters of
// [a-z0-9-].
var ErrInvalidName = errors.New("guestlab: invalid name")
