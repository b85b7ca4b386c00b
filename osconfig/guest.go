package osconfig

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
)

// ResponseWait holds wait_for_response's parameters.
type ResponseWait struct {
	InitialDelay, Timeout, Interval time.Duration
}

// VCL's wait_for_response defaults per OS.
var (
	// LinuxResponseWait: 5 s initial delay, 600 s timeout, every 5 s.
	LinuxResponseWait = ResponseWait{InitialDelay: 5 * time.Second, Timeout: 600 * time.Second, Interval: 5 * time.Second}
	// WindowsResponseWait: 15 s initial delay, 900 s timeout, every 8 s.
	WindowsResponseWait = ResponseWait{InitialDelay: 15 * time.Second, Timeout: 900 * time.Second, Interval: 8 * time.Second}
)

// DefaultResponseWait returns VCL's defaults for an OS type (Linux's for unknown).
func DefaultResponseWait(osType string) ResponseWait {
	if osType == messages.OSWindows {
		return WindowsResponseWait
	}
	return LinuxResponseWait
}

// Guest is what a state flow does to a loaded machine, whatever its OS. *Linux and
// *Windows implement it; Client.Guest picks one by OS type.
type Guest interface {
	WaitForResponse(ctx context.Context, initialDelay, timeout, interval time.Duration) error
	NodeStatus(ctx context.Context) (NodeStatus, error)
	PostLoad(ctx context.Context) error
	AddUsers(ctx context.Context, users []User) ([]Credential, error)
	GrantAccess(ctx context.Context, remoteIP string) error
	LoggedInUsers(ctx context.Context) ([]string, error)
	Taint(ctx context.Context) error
	Sanitize(ctx context.Context, logins []string) error
	PreCapture(ctx context.Context, logins []string) error
}

// User is an account to create. Password is set when given, else a random one is
// generated (and returned in a Credential).
type User struct {
	Login      string
	UID        int64 // 0: the guest picks
	SSHKeys    []string
	RootAccess bool
	Password   Secret
}

// Credential is the password an account got.
type Credential struct {
	Login    string
	Password Secret
}

// Guest returns the Linux or Windows operations (by messages.OSLinux /
// messages.OSWindows) for t, reporting to p (nil: discard).
func (c *Client) Guest(t Target, osType string, p Progress) (Guest, error) {
	switch osType {
	case messages.OSLinux:
		return c.Linux(t, p)
	case messages.OSWindows:
		return c.Windows(t, p)
	}
	return nil, fmt.Errorf("%w: %q", ErrUnsupportedOS, osType)
}

// base is what both OS implementations share: the target, how to connect, where to
// report.
type base struct {
	os      string
	t       Target
	connect func(ctx context.Context) (Runner, error)
	dial    func(ctx context.Context, addr string) (net.Conn, error) // TCP probe
	port    int
	dialTO  time.Duration
	p       Progress
	log     zerolog.Logger
	probe   Command // the trivial command readiness runs
}

func (c *Client) base(osType string, t Target, p Progress, probe Command) (base, error) {
	if err := t.Validate(); err != nil {
		return base{}, err
	}
	if p == nil {
		p = discard{}
	}
	return base{
		os: osType, t: t, p: p, port: c.cfg.Port, dialTO: c.cfg.DialTimeout, probe: probe,
		connect: func(ctx context.Context) (Runner, error) { return c.connect(ctx, t) },
		dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return c.cfg.Dialer.DialContext(ctx, "tcp", addr)
		},
		log: c.log.With().Str("computer", t.Slot).Str("host", t.IP).Str("os", osType).Logger(),
	}, nil
}

type discard struct{}

func (discard) Step(string, string) {}

// wrap adds operation, slot and host to err.
func (b *base) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("osconfig %s: slot %s host %s: %w", op, b.t.Slot, b.t.IP, err)
}

// session connects, runs f, and closes the connection.
func (b *base) session(ctx context.Context, f func(Runner) error) error {
	r, err := b.connect(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	return f(r)
}

// WaitForResponse waits until the guest answers: first TCP port 22 opens, then a
// trivial command succeeds over SSH. It sleeps initialDelay, then tries every interval
// until timeout, at most timeout/interval+1 attempts (VCL's defaults: Linux 5/600/5 s,
// Windows 15/900/8 s). On success it reports machinebooted with the elapsed time. A
// changed host key (ErrHostKeyChanged) ends the wait at once. The failure wraps
// ErrNotResponding and wait.ErrTimeout and states elapsed time and attempts.
func (b *base) WaitForResponse(ctx context.Context, initialDelay, timeout, interval time.Duration) error {
	start := time.Now()
	if timeout <= 0 || interval <= 0 {
		return b.wrap("wait_for_response", fmt.Errorf("%w: timeout %s and interval %s must be positive", ErrInvalidInput, timeout, interval))
	}
	addr := b.t.addr(b.port)
	attemptTO := min(interval, b.dialTO)
	phase := "port 22"
	err := wait.Until(ctx, timeout, interval, func(ctx context.Context) (bool, error) {
		dctx, cancel := context.WithTimeout(ctx, attemptTO)
		conn, err := b.dial(dctx, addr)
		cancel()
		if err != nil {
			phase = "port 22"
			return false, fmt.Errorf("port 22: %w", err)
		}
		conn.Close()
		phase = "ssh"
		err = b.session(ctx, func(r Runner) error {
			probe := b.probe
			probe.Timeout = max(attemptTO, 5*time.Second)
			_, err := r.Run(ctx, probe)
			return err
		})
		if errors.Is(err, ErrHostKeyChanged) {
			return false, wait.Permanent(err)
		}
		return err == nil, err
	}, wait.InitialDelay(initialDelay), wait.MaxAttempts(int(timeout/interval)+1))
	elapsed := time.Since(start).Round(time.Millisecond)
	if err != nil {
		if errors.Is(err, ErrHostKeyChanged) {
			return b.wrap("wait_for_response", err)
		}
		b.log.Warn().Err(err).Dur("elapsed", elapsed).Str("phase", phase).Msg("guest not responding")
		return b.wrap("wait_for_response", fmt.Errorf("%w after %s (%s): %w", ErrNotResponding, elapsed, phase, err))
	}
	b.p.Step(messages.LoadMachineBooted, fmt.Sprintf("%s responded to SSH after %s", b.t.IP, elapsed))
	b.log.Info().Dur("elapsed", elapsed).Msg("guest responded")
	return nil
}

// validateUsers checks every user before anything is sent.
func validateUsers(users []User) error {
	var errs []error
	seen := map[string]bool{}
	for i, u := range users {
		if err := messages.ValidUsername(u.Login); err != nil {
			errs = append(errs, fmt.Errorf("users[%d]: %v", i, err))
			continue
		}
		switch u.Login {
		case "root", "administrator", "vcl":
			errs = append(errs, fmt.Errorf("users[%d]: %q is a reserved account", i, u.Login))
		}
		if seen[u.Login] {
			errs = append(errs, fmt.Errorf("users[%d]: %q appears twice", i, u.Login))
		}
		seen[u.Login] = true
		if u.UID != 0 && (u.UID < 1000 || u.UID > 1<<31-2) {
			errs = append(errs, fmt.Errorf("users[%d]: uid %d outside 1000..%d", i, u.UID, 1<<31-2))
		}
		if len(u.SSHKeys) > messages.MaxSSHKeys {
			errs = append(errs, fmt.Errorf("users[%d]: %d SSH keys, more than %d", i, len(u.SSHKeys), messages.MaxSSHKeys))
		}
		for j, k := range u.SSHKeys {
			if err := messages.ValidSSHPublicKey(k); err != nil {
				errs = append(errs, fmt.Errorf("users[%d].ssh_keys[%d]: %v", i, j, err))
			}
		}
		if p := u.Password.Reveal(); p != "" && !safePassword(p) {
			errs = append(errs, fmt.Errorf("users[%d]: password must be 8-128 printable ASCII characters without ':'", i))
		}
	}
	if len(users) > messages.MaxUsers {
		errs = append(errs, fmt.Errorf("%d users, more than %d", len(users), messages.MaxUsers))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidInput, errors.Join(errs...))
	}
	return nil
}

// safePassword: printable ASCII, no ':' (chpasswd's separator), 8-128 characters.
func safePassword(p string) bool {
	if len(p) < 8 || len(p) > 128 {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] < 0x21 || p[i] > 0x7e || p[i] == ':' {
			return false
		}
	}
	return true
}

func validateLogins(logins []string) error {
	var errs []error
	for i, l := range logins {
		if err := messages.ValidUsername(l); err != nil {
			errs = append(errs, fmt.Errorf("logins[%d]: %v", i, err))
		} else if l == "root" || l == "administrator" || l == "vcl" {
			errs = append(errs, fmt.Errorf("logins[%d]: %q is a reserved account", i, l))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidInput, errors.Join(errs...))
	}
	return nil
}

func validateIP(field, ip string) error {
	if err := messages.ValidIP(ip); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalidInput, field, err)
	}
	return nil
}

// credentials fills in missing passwords.
func credentials(users []User) ([]Credential, error) {
	creds := make([]Credential, len(users))
	for i, u := range users {
		pw := u.Password
		if pw == "" {
			var err error
			if pw, err = NewPassword(); err != nil {
				return nil, err
			}
		}
		creds[i] = Credential{Login: u.Login, Password: pw}
	}
	return creds, nil
}

func timestamp() string { return time.Now().UTC().Format("2006-01-02 15:04:05") }
