package osconfig

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/ssh"
)

// Command is one command run on a guest.
type Command struct {
	// Name is a short label for logs and errors ("useradd", "firewall").
	Name string
	// Line is the command line the guest's shell runs. It is built only from
	// constants and ShellQuote'd / PSQuote'd validated values, and holds no secret.
	Line string
	// Stdin is sent to the command; secrets travel here and nowhere else. Never logged.
	Stdin []byte
	// Timeout bounds the command (default: Config.CommandTimeout).
	Timeout time.Duration
}

// Result is a finished command. A Runner returns it with a *CommandError when the exit
// status is not 0.
type Result struct {
	Stdout     []byte
	Stderr     []byte
	ExitStatus int
}

// Runner runs commands on one guest connection. Linux and Windows operations are
// written against it, so tests can record the exact transcript with a fake.
type Runner interface {
	Run(ctx context.Context, cmd Command) (Result, error)
	Close() error
}

// maxOutput bounds what is kept of a command's stdout and stderr.
const maxOutput = 1 << 20

type sshRunner struct {
	client  *ssh.Client
	timeout time.Duration
	log     zerolog.Logger
}

func (r *sshRunner) Close() error { return r.client.Close() }

// Run runs cmd in a new session. On timeout or cancel it signals the command, closes
// the session and, if the session does not end within 2 s, the connection.
func (r *sshRunner) Run(ctx context.Context, cmd Command) (Result, error) {
	timeout := cmd.Timeout
	if timeout <= 0 {
		timeout = r.timeout
	}
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, ErrCommandTimeout)
	defer cancel()
	start := time.Now()
	sess, err := r.client.NewSession()
	if err != nil {
		return Result{}, fmt.Errorf("%s: new session: %w: %v", cmd.Name, ErrConnectionLost, err)
	}
	defer sess.Close()
	var stdout, stderr limitedBuffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	sess.Stdin = bytes.NewReader(cmd.Stdin)
	done := make(chan error, 1)
	go func() { done <- sess.Run(cmd.Line) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = sess.Signal(ssh.SIGKILL)
		_ = sess.Close()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			_ = r.client.Close()
		}
		cause := context.Cause(ctx)
		if errors.Is(cause, ErrCommandTimeout) {
			return Result{}, fmt.Errorf("%s: %w after %s", cmd.Name, ErrCommandTimeout, timeout)
		}
		return Result{}, fmt.Errorf("%s: %w", cmd.Name, cause)
	}
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	var ee *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.ExitStatus = ee.ExitStatus()
		err = &CommandError{Name: cmd.Name, ExitStatus: res.ExitStatus, Stderr: trimStderr(res.Stderr)}
	case errors.As(err, &missing), errors.Is(err, io.EOF):
		err = fmt.Errorf("%s: %w: %v", cmd.Name, ErrConnectionLost, err)
	default:
		err = fmt.Errorf("%s: %w", cmd.Name, err)
	}
	r.log.Debug().Str("command", cmd.Name).Int("exit", res.ExitStatus).Dur("took", time.Since(start)).Msg("guest command")
	return res, err
}

// trimStderr keeps the first 512 bytes of stderr, one line.
func trimStderr(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 512 {
		s = s[:512] + "..."
	}
	return strings.ReplaceAll(s, "\n", " | ")
}

// limitedBuffer keeps the first maxOutput bytes written to it.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := maxOutput - b.Len(); room > 0 {
		if len(p) > room {
			b.Buffer.Write(p[:room])
		} else {
			b.Buffer.Write(p)
		}
	}
	return len(p), nil
}
