// Package testutil gives tests real components: an embedded JetStream server with
// vclq's streams, and a bounded poller.
package testutil

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/natsembed"
	"github.com/vclq/vclq/streams"
)

// JetStream is a running embedded server and a connection to it.
type JetStream struct {
	Server *natsembed.Server
	URL    string
	NC     *nats.Conn
	JS     jetstream.JetStream

	storeDir string
	port     int
}

// Stop stops the server, keeping its store (an outage; NC reconnects after Restart).
func (j *JetStream) Stop() { j.Server.Stop() }

// Restart starts the stopped server again on the same port and store directory.
func (j *JetStream) Restart(t testing.TB) {
	t.Helper()
	s, err := natsembed.Start(natsembed.Options{Port: j.port, StoreDir: j.storeDir})
	if err != nil {
		t.Fatalf("restart nats-server on port %d: %v", j.port, err)
	}
	t.Cleanup(s.Stop)
	j.Server = s
}

// StartJetStream starts an embedded nats-server with JetStream in t.TempDir(), connects
// to it, and stops both when the test ends.
func StartJetStream(t testing.TB) *JetStream {
	t.Helper()
	dir := t.TempDir()
	s, err := natsembed.Start(natsembed.Options{StoreDir: dir})
	if err != nil {
		t.Fatalf("start nats-server: %v", err)
	}
	t.Cleanup(s.Stop)
	nc, err := nats.Connect(s.URL(), nats.Name("vclq-test"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect %s: %v", s.URL(), err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return &JetStream{Server: s, URL: s.URL(), NC: nc, JS: js, storeDir: dir, port: s.Addr().(*net.TCPAddr).Port}
}

// StartVCLJetStream is StartJetStream with vclq's streams, consumers and buckets
// created by streams.Ensure with the given options.
func StartVCLJetStream(t testing.TB, o streams.Options) *JetStream {
	t.Helper()
	j := StartJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, j.JS, o); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	return j
}

// WaitFor polls f every `every` until it returns nil, failing the test with f's last
// error once `total` has passed.
func WaitFor(t testing.TB, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	attempts := 0
	for {
		attempts++
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s (%d attempts): %v", total, attempts, err)
		}
		time.Sleep(every)
	}
}

// SyncBuffer collects output written from several goroutines (loggers, NATS
// handlers); its zero value is ready to use.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
