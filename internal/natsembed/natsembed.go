// Package natsembed runs the pinned nats-server in-process with JetStream, for tests,
// benchmarks and `vclq dev`.
package natsembed

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options of an embedded server.
type Options struct {
	// Host and Port of the client listener. default: 127.0.0.1, a free port.
	Host string
	Port int
	// StoreDir holds JetStream's files. Required: the caller owns its lifetime.
	StoreDir string
	// ServerName. default: "vclq-embedded".
	ServerName string
	// ReadyTimeout bounds the start. default: 10s.
	ReadyTimeout time.Duration
	// Debug turns on the server's own logging to stderr.
	Debug bool
	// SyncInterval is how often JetStream fsyncs its files (jetstream.sync_interval).
	// default: the server's, 2 minutes.
	SyncInterval time.Duration
	// SyncAlways fsyncs every write before it is acknowledged (sync_interval: always).
	SyncAlways bool
}

// Server is a running embedded nats-server.
type Server struct {
	*server.Server
}

// Start starts a server and waits until it accepts clients.
func Start(o Options) (*Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("natsembed: StoreDir is required")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	if o.ServerName == "" {
		o.ServerName = "vclq-embedded"
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	if err := os.MkdirAll(o.StoreDir, 0o700); err != nil {
		return nil, fmt.Errorf("natsembed: store dir: %w", err)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName:   o.ServerName,
		Host:         o.Host,
		Port:         o.Port,
		JetStream:    true,
		StoreDir:     o.StoreDir,
		NoSigs:       true,
		NoLog:        !o.Debug,
		MaxPayload:   1 << 20,
		SyncInterval: o.SyncInterval,
		SyncAlways:   o.SyncAlways,
	})
	if err != nil {
		return nil, fmt.Errorf("natsembed: %w", err)
	}
	if o.Debug {
		ns.ConfigureLogger()
	}
	go ns.Start()
	if !ns.ReadyForConnections(o.ReadyTimeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("natsembed: server not ready within %s", o.ReadyTimeout)
	}
	return &Server{ns}, nil
}

// URL is the client URL, nats://host:port.
func (s *Server) URL() string {
	addr := s.Addr().(*net.TCPAddr)
	return "nats://" + net.JoinHostPort(addr.IP.String(), strconv.Itoa(addr.Port))
}

// Stop shuts the server down and waits for it.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}
