package hypervisor

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// HostConfig is the worker's configuration of one ESX host. Credentials come from here
// (or from PasswordFile), never from messages.
type HostConfig struct {
	// Name identifies the host in logs and errors (VCL's vmhost hostname).
	// default: the URL's host.
	Name string
	// URL of the host's SDK: "https://esx1.example.org/sdk" or just "esx1.example.org".
	URL string
	// Username for the host API. default: the URL's user, if any.
	Username string
	// Password, or PasswordFile: a file holding it (read at every login, trailing
	// newline removed). default: the URL's password, if any.
	Password     string
	PasswordFile string
	// Thumbprint pins the host's TLS certificate: its SHA-1 or SHA-256 fingerprint in
	// hex, colons optional ("AB:CD:..."). Without it the certificate must verify
	// against the system's roots, unless Insecure is set.
	Thumbprint string
	// Insecure skips TLS verification. Only for explicit configuration; never default.
	Insecure bool
	// MaxConcurrent bounds the calls (and the tasks they wait on) this process runs on
	// the host at once, shared by all jobs. default: 4
	MaxConcurrent int
	// CallTimeout bounds one API call (one attempt). default: 1m
	CallTimeout time.Duration
	// TaskTimeout bounds waiting for one task, e.g. a disk copy. default: 30m
	TaskTimeout time.Duration
	// KeepAlive is the idle interval of the session keepalive. default: 5m
	KeepAlive time.Duration
	// MaxAttempts per call for transient faults (including the first). default: 5
	MaxAttempts int
	// Backoff is the first retry delay; it doubles up to BackoffMax, with jitter.
	// defaults: 250ms and 10s
	Backoff, BackoffMax time.Duration
	// ShutdownTimeout bounds the wait for a guest shutdown before a capture powers the
	// VM off hard. default: 5m
	ShutdownTimeout time.Duration
	// PowerTimeout bounds waiting for a power state change. default: 2m
	PowerTimeout time.Duration
}

// Defaults of HostConfig.
const (
	DefaultMaxConcurrent   = 4
	DefaultCallTimeout     = time.Minute
	DefaultTaskTimeout     = 30 * time.Minute
	DefaultKeepAlive       = 5 * time.Minute
	DefaultMaxAttempts     = 5
	DefaultBackoff         = 250 * time.Millisecond
	DefaultBackoffMax      = 10 * time.Second
	DefaultShutdownTimeout = 5 * time.Minute
	DefaultPowerTimeout    = 2 * time.Minute
)

func (c HostConfig) withDefaults() (HostConfig, *url.URL, error) {
	raw := c.URL
	if raw == "" {
		return c, nil, fmt.Errorf("%w: host config: no URL", ErrInvalid)
	}
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return c, nil, fmt.Errorf("%w: host config: URL %q does not parse", ErrInvalid, c.URL)
	}
	if u.Scheme != "https" {
		return c, nil, fmt.Errorf("%w: host config: URL %q is not https", ErrInvalid, c.URL)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/sdk"
	}
	if u.User != nil {
		if c.Username == "" {
			c.Username = u.User.Username()
		}
		if p, ok := u.User.Password(); ok && c.Password == "" && c.PasswordFile == "" {
			c.Password = p
		}
		u.User = nil
	}
	if c.Username == "" {
		return c, nil, fmt.Errorf("%w: host config %s: no username", ErrInvalid, u.Host)
	}
	if c.Password == "" && c.PasswordFile == "" {
		return c, nil, fmt.Errorf("%w: host config %s: no password or password file", ErrInvalid, u.Host)
	}
	if c.Thumbprint != "" {
		tp, err := normalizeThumbprint(c.Thumbprint)
		if err != nil {
			return c, nil, fmt.Errorf("%w: host config %s: %v", ErrInvalid, u.Host, err)
		}
		c.Thumbprint = tp
	}
	if c.Name == "" {
		c.Name = u.Hostname()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = DefaultMaxConcurrent
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	def(&c.CallTimeout, DefaultCallTimeout)
	def(&c.TaskTimeout, DefaultTaskTimeout)
	def(&c.KeepAlive, DefaultKeepAlive)
	def(&c.Backoff, DefaultBackoff)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.ShutdownTimeout, DefaultShutdownTimeout)
	def(&c.PowerTimeout, DefaultPowerTimeout)
	return c, u, nil
}

func (c HostConfig) password() (string, error) {
	if c.PasswordFile == "" {
		return c.Password, nil
	}
	b, err := os.ReadFile(c.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("host %s: password file: %w", c.Name, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// normalizeThumbprint returns the upper-case colon-separated form of a SHA-1 or
// SHA-256 fingerprint.
func normalizeThumbprint(s string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 20 && len(b) != 32) {
		return "", fmt.Errorf("thumbprint %q is not a SHA-1 or SHA-256 fingerprint in hex", s)
	}
	return colonHex(b), nil
}

func colonHex(b []byte) string {
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02X", x)
	}
	return strings.Join(parts, ":")
}
