package flow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/osconfig"
)

// Setup is the management node's configuration of the flows, as `vclq worker` reads
// it from its JSON file ("flow" section). Credentials live here (or in the files it
// names), never in messages.
type Setup struct {
	// Hosts are the ESX hosts this node may load, by VCL vmhost hostname.
	Hosts []HostSetup `json:"hosts"`
	// SSHKeyFile is the management node's private key (root on guests).
	SSHKeyFile string `json:"ssh_key_file"`
	// KnownHostsFile records each slot's SSH host key (see osconfig's host key policy).
	KnownHostsFile string `json:"known_hosts_file"`
	// SealPublicKeyFile holds the bridge's public key (base64): user passwords are
	// sealed to it. Optional: without it, no password leaves the guest.
	SealPublicKeyFile string `json:"seal_public_key_file,omitempty"`
	// ManagementIP is the address guests' firewalls always allow when a request
	// names none.
	ManagementIP string `json:"management_ip,omitempty"`
	// BootTimeout overrides VCL's wait_for_response timeouts (600 s Linux, 900 s
	// Windows). Optional.
	BootTimeout Duration `json:"boot_timeout,omitempty"`
	// BootInterval overrides the readiness poll interval. Optional.
	BootInterval Duration `json:"boot_interval,omitempty"`

	// HostKeyStore shares recorded host keys with the other management nodes (the
	// worker sets it to the vclq_hostkeys bucket). Optional; not configuration.
	HostKeyStore osconfig.HostKeyStore `json:"-"`
	// HostObserver is told of every ESX host call (the worker's metrics). Optional;
	// not configuration.
	HostObserver hypervisor.CallObserver `json:"-"`
}

// HostSetup is one ESX host.
type HostSetup struct {
	Name          string   `json:"name"` // VCL vmhost hostname
	URL           string   `json:"url"`
	Username      string   `json:"username"`
	PasswordFile  string   `json:"password_file,omitempty"`
	Password      string   `json:"password,omitempty"` // prefer password_file
	Thumbprint    string   `json:"thumbprint,omitempty"`
	Insecure      bool     `json:"insecure,omitempty"` // explicit only
	MaxConcurrent int      `json:"max_concurrent,omitempty"`
	CallTimeout   Duration `json:"call_timeout,omitempty"`
}

// Duration is a time.Duration written as "30s" in JSON.
type Duration time.Duration

// UnmarshalJSON reads "30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// MarshalJSON writes "30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// HostConfigs converts the hosts for hypervisor.NewPool.
func (s Setup) HostConfigs() []hypervisor.HostConfig {
	var out []hypervisor.HostConfig
	for _, h := range s.Hosts {
		out = append(out, hypervisor.HostConfig{Name: h.Name, URL: h.URL, Username: h.Username, Password: h.Password,
			PasswordFile: h.PasswordFile, Thumbprint: h.Thumbprint, Insecure: h.Insecure, MaxConcurrent: h.MaxConcurrent,
			CallTimeout: time.Duration(h.CallTimeout)})
	}
	return out
}

// Config makes the handler configuration: a hypervisor pool over the hosts and an SSH
// client with the host key policy. The returned close function ends the host sessions.
func (s Setup) Config(log zerolog.Logger) (Config, func(context.Context), error) {
	if len(s.Hosts) == 0 {
		return Config{}, nil, errors.New("flow setup: no hosts")
	}
	opts := []hypervisor.Option{hypervisor.WithLogger(log)}
	if s.HostObserver != nil {
		opts = append(opts, hypervisor.WithObserver(s.HostObserver))
	}
	pool, err := hypervisor.NewPool(s.HostConfigs(), opts...)
	if err != nil {
		return Config{}, nil, fmt.Errorf("flow setup: %w", err)
	}
	closeHosts := func(ctx context.Context) { _ = pool.Close(ctx) }
	ssh, err := osconfig.New(osconfig.Config{KeyFile: s.SSHKeyFile, KnownHostsFile: s.KnownHostsFile, SharedHostKeys: s.HostKeyStore, Logger: &log})
	if err != nil {
		closeHosts(context.Background())
		return Config{}, nil, fmt.Errorf("flow setup: %w", err)
	}
	cfg := Config{
		VMs: func(host string) (VMs, error) {
			h, err := pool.Host(host)
			if err != nil {
				return nil, err
			}
			return h, nil
		},
		Guest: func(t osconfig.Target, osType string, p osconfig.Progress) (Guest, error) {
			return ssh.Guest(t, osType, p)
		},
		ExpectNewHostKey: ssh.ExpectNewHostKey,
		SettleHostKey:    ssh.SettleHostKey,
		ManagementIP:     s.ManagementIP,
		Log:              log,
	}
	if s.BootTimeout > 0 {
		iv := time.Duration(s.BootInterval)
		if iv <= 0 {
			iv = time.Second
		}
		cfg.LinuxBootWait = BootWait{Timeout: time.Duration(s.BootTimeout), Interval: iv}
		cfg.WindowsBootWait = cfg.LinuxBootWait
	}
	if s.SealPublicKeyFile != "" {
		if cfg.Sealer, err = LoadSealer(s.SealPublicKeyFile); err != nil {
			closeHosts(context.Background())
			return Config{}, nil, fmt.Errorf("flow setup: %w", err)
		}
	}
	return cfg, closeHosts, nil
}

// Build makes the handler from Config.
func (s Setup) Build(log zerolog.Logger) (*Handler, func(context.Context), error) {
	cfg, closeHosts, err := s.Config(log)
	if err != nil {
		return nil, nil, err
	}
	h, err := NewHandler(cfg)
	if err != nil {
		closeHosts(context.Background())
		return nil, nil, err
	}
	return h, closeHosts, nil
}
