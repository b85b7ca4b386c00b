package osconfig

import (
	"errors"
	"fmt"
)

// ErrInvalidInput is wrapped when a value (username, SSH key, hostname, IP, uid,
// target) fails validation. It is returned before any connection is made.
var ErrInvalidInput = errors.New("osconfig: invalid input")

// ErrHostKeyChanged is wrapped when a guest presents a host key other than the one
// recorded for it and no re-image was announced with ExpectNewHostKey. Never retry it
// blindly: it is what a man-in-the-middle looks like.
var ErrHostKeyChanged = errors.New("osconfig: host key changed")

// ErrNotResponding is wrapped by WaitForResponse when the guest did not answer SSH in
// time; the message has the elapsed time and the number of attempts.
var ErrNotResponding = errors.New("osconfig: guest not responding")

// ErrCommandFailed is wrapped (through *CommandError) when a guest command exits
// non-zero.
var ErrCommandFailed = errors.New("osconfig: command failed")

// ErrCommandTimeout is wrapped when a guest command outlives its timeout; the command
// was signalled and its session closed.
var ErrCommandTimeout = errors.New("osconfig: command timed out")

// ErrConnectionLost is wrapped when the SSH connection ended before a command
// reported its exit status.
var ErrConnectionLost = errors.New("osconfig: connection lost")

// ErrUserLoggedIn is wrapped by Sanitize (and PreCapture) when a user is logged in.
var ErrUserLoggedIn = errors.New("osconfig: user logged in")

// ErrNoCurrentImage is wrapped by NodeStatus when the guest has no currentimage.txt.
var ErrNoCurrentImage = errors.New("osconfig: no currentimage.txt")

// ErrUnsupportedOS is returned by Client.Guest for an OS type other than linux or
// windows.
var ErrUnsupportedOS = errors.New("osconfig: unsupported OS type")

// CommandError is a guest command that exited non-zero. Stderr is trimmed to 512 bytes;
// commands never echo secrets, so it is safe to log.
type CommandError struct {
	Name       string // the command's short name, e.g. "useradd"
	ExitStatus int
	Stderr     string
}

func (e *CommandError) Error() string {
	if e.Stderr == "" {
		return fmt.Sprintf("%s: exit status %d", e.Name, e.ExitStatus)
	}
	return fmt.Sprintf("%s: exit status %d: %s", e.Name, e.ExitStatus, e.Stderr)
}

// Unwrap makes errors.Is(err, ErrCommandFailed) hold.
func (e *CommandError) Unwrap() error { return ErrCommandFailed }
