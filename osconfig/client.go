package osconfig

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/ssh"

	"github.com/vclq/vclq/messages"
)

// Progress receives loadlog steps as an operation makes them: name is a messages.Load*
// constant (machinebooted, addinguser, info, WARNING), info free text. It never
// receives secrets. Implementations must be safe for concurrent use and not block.
type Progress interface {
	Step(name, info string)
}

// Dialer opens TCP connections to guests (net.Dialer does).
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Defaults for Config.
const (
	DefaultUser           = "root"
	DefaultPort           = 22
	DefaultDialTimeout    = 10 * time.Second
	DefaultCommandTimeout = 2 * time.Minute
)

// Config configures a Client.
type Config struct {
	// KeyFile is the management node's SSH private key (ed25519, unencrypted, PEM or
	// OpenSSH format). Required.
	KeyFile string
	// KnownHostsFile records each slot's host key (created if missing, mode 0600).
	// Required.
	KnownHostsFile string
	// User to log in as. default: root.
	User string
	// Port of sshd on guests. default: 22.
	Port int
	// DialTimeout bounds TCP connect plus SSH handshake. default: 10 s.
	DialTimeout time.Duration
	// CommandTimeout bounds each guest command that sets no timeout of its own.
	// default: 2 min.
	CommandTimeout time.Duration
	// Dialer opens connections. default: a net.Dialer.
	Dialer Dialer
	// SharedHostKeys shares recorded host keys with the other management nodes (see
	// the package doc). Optional: without it each node knows only its own records.
	SharedHostKeys HostKeyStore
	// Logger. default: disabled.
	Logger *zerolog.Logger
}

// Client connects to guests with the management node's key under the host key policy
// (see the package doc). It is safe for concurrent use by many reservations.
type Client struct {
	cfg    Config
	signer ssh.Signer
	keys   *hostKeys
	log    zerolog.Logger
}

// New loads the key and the known_hosts file. It makes no connection.
func New(cfg Config) (*Client, error) {
	if cfg.KeyFile == "" || cfg.KnownHostsFile == "" {
		return nil, fmt.Errorf("%w: KeyFile and KnownHostsFile are required", ErrInvalidInput)
	}
	if cfg.User == "" {
		cfg.User = DefaultUser
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = DefaultCommandTimeout
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	log := zerolog.Nop()
	if cfg.Logger != nil {
		log = *cfg.Logger
	}
	pem, err := os.ReadFile(cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("osconfig: management key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		return nil, fmt.Errorf("osconfig: management key %s: %w", cfg.KeyFile, err)
	}
	keys, err := newHostKeys(cfg.KnownHostsFile, log)
	if err != nil {
		return nil, fmt.Errorf("osconfig: %w", err)
	}
	keys.shared = cfg.SharedHostKeys
	return &Client{cfg: cfg, signer: signer, keys: keys, log: log}, nil
}

// ExpectNewHostKey allows slot's host key to change once: the load flow calls it right
// after it re-imaged the slot's VM. The first check that accepts a changed key uses it
// up; a check that finds the recorded key does not (the old guest may still answer for
// a moment, or clones of one image may share its key). SettleHostKey withdraws it when
// the load is over.
func (c *Client) ExpectNewHostKey(slot string) { c.keys.expect(slot) }

// SettleHostKey withdraws an announced re-image of slot: the load is complete (or
// rolled back), so from now on a changed key is refused again.
func (c *Client) SettleHostKey(slot string) { c.keys.settle(slot) }

// NewHostKeyExpected reports whether ExpectNewHostKey(slot) is still unconsumed.
func (c *Client) NewHostKeyExpected(slot string) bool { return c.keys.pending(slot) }

// Target is one guest: the slot it is and what post-load configures it with.
type Target struct {
	// Slot is the computer's short name: logs, errors and the host key policy use it.
	Slot string
	// IP is the guest's private address, where SSH goes.
	IP string
	// Hostname is the computer's host name, set by PostLoad (optional otherwise).
	Hostname string
	// ManagementIP is the management node's address: the guest firewall always allows
	// it. Required by PostLoad, GrantAccess and Sanitize.
	ManagementIP string
}

// Validate checks every field; the error wraps ErrInvalidInput.
func (t Target) Validate() error {
	var errs []error
	if err := messages.ValidShortName(t.Slot); err != nil {
		errs = append(errs, fmt.Errorf("slot: %v", err))
	}
	if err := messages.ValidIP(t.IP); err != nil {
		errs = append(errs, fmt.Errorf("ip: %v", err))
	}
	if t.Hostname != "" {
		if err := messages.ValidHostname(t.Hostname); err != nil {
			errs = append(errs, fmt.Errorf("hostname: %v", err))
		}
	}
	if t.ManagementIP != "" {
		if err := messages.ValidIP(t.ManagementIP); err != nil {
			errs = append(errs, fmt.Errorf("management ip: %v", err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: target: %w", ErrInvalidInput, errors.Join(errs...))
	}
	return nil
}

func (t Target) addr(port int) string { return net.JoinHostPort(t.IP, strconv.Itoa(port)) }

// connect opens an authenticated SSH connection to t (TCP + handshake bounded by
// DialTimeout and ctx).
func (c *Client) connect(ctx context.Context, t Target) (Runner, error) {
	addr := t.addr(c.cfg.Port)
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	conn, err := c.cfg.Dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	algos := preferredHostKeyAlgorithms
	if !c.keys.pending(t.Slot) {
		if known := c.keys.knownTypes(addr); len(known) > 0 {
			algos = hostKeyAlgorithms(known)
		}
	}
	cfg := &ssh.ClientConfig{
		User:              c.cfg.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(c.signer)},
		HostKeyCallback:   c.keys.callback(t.Slot),
		HostKeyAlgorithms: algos,
		Timeout:           c.cfg.DialTimeout,
	}
	// The handshake honours ctx: a deadline on the conn, and closing it on cancel.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if !stop() {
		if err == nil {
			sc.Close()
		}
		conn.Close()
		return nil, fmt.Errorf("ssh handshake %s: %w", addr, context.Cause(ctx))
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh handshake %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	client := ssh.NewClient(sc, chans, reqs)
	return &sshRunner{client: client, timeout: c.cfg.CommandTimeout, log: c.log.With().Str("computer", t.Slot).Str("host", t.IP).Logger()}, nil
}
