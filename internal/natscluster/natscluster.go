// Package natscluster is a test harness: a JetStream cluster of in-process nats-server
// (the pinned v2.15.2) servers on loopback, for tests that need RAFT as production has
// it (start-up races between components, stream and consumer leader failover).
//
// Start runs Size (default 3) servers, each with its own client and route port (free
// loopback ports chosen once, kept across restarts), its own StoreDir under the
// caller's directory, a unique server name (s0, s1, ...) and one cluster name, routed
// to each other; it returns once a meta leader exists and every server is current.
//
//	c, err := natscluster.Start(ctx, t.TempDir(), natscluster.Options{})
//	if err != nil { t.Fatal(err) }
//	defer c.Close()
//	nc, _ := nats.Connect(c.URLs())           // all three client URLs
//	leader, _ := c.WaitStreamLeader(ctx, "S") // index of the stream leader
//	c.Kill(leader)                            // shutdown, the store stays
//	_ = c.Restart(leader)                     // same ports and store, waits until current
//
// Servers are addressed by index 0..Size-1; leader lookups return -1 when there is
// none (yet). Leader lookups use the servers' own views (JetStreamIsLeader,
// JetStreamIsStreamLeader, JetStreamIsConsumerLeader) in the global account "$G":
// the harness configures no accounts. Every wait is bounded, by the caller's context
// or by Options.WaitTimeout. A Cluster is safe for use from several goroutines.
//
// It lives in internal/ because it is a harness, not production code: production
// clusters run nats-server from a configuration file (docs/architecture.md).
package natscluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/vclq/vclq/internal/wait"
)

// Account is the account JetStream assets live in when no accounts are configured.
const Account = server.DEFAULT_GLOBAL_ACCOUNT

// Options of a cluster. The zero value is usable.
type Options struct {
	// Size is the number of servers. default: 3.
	Size int
	// Name is the cluster name. default: "vclq-test".
	Name string
	// WaitTimeout bounds the waits that take no context: Start's and Restart's wait
	// for a meta leader and current servers. default: 45s (elections on a loaded
	// 2-core machine take up to ~10 s).
	WaitTimeout time.Duration
	// Debug turns on the servers' own logging to stderr.
	Debug bool
	// ServerOptions, when set, builds server i's options in place of the harness's
	// own: from a configuration file (server.ProcessConfigFile) with the given ports
	// substituted, say. It gets the ports the harness chose (kept across restarts) and
	// is called for every (re)start; the harness then sets NoSigs, and NoLog unless
	// Debug. Name and StoreDir then report the harness's defaults, not the
	// configuration's, and leader lookups (StreamLeader, ConsumerLeader) assume the
	// global account: with configured accounts, use the servers' own calls.
	ServerOptions func(i int, ports Ports) (*server.Options, error)
}

// Ports are the loopback ports of the servers, by index.
type Ports struct {
	Client []int
	Route  []int
}

func (o Options) withDefaults() Options {
	if o.Size <= 0 {
		o.Size = 3
	}
	if o.Name == "" {
		o.Name = "vclq-test"
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = 45 * time.Second
	}
	return o
}

// Cluster is a running cluster. Close it when done.
type Cluster struct {
	opts        Options
	dir         string
	clientPorts []int
	routePorts  []int

	mu      sync.Mutex
	servers []*server.Server // nil while killed
}

// Start starts the servers with their stores under dir (dir/s0, dir/s1, ...) and
// waits, bounded by ctx and Options.WaitTimeout, until a meta leader sees every
// server as a peer and every server is current.
func Start(ctx context.Context, dir string, o Options) (*Cluster, error) {
	o = o.withDefaults()
	ports, err := freePorts(2 * o.Size)
	if err != nil {
		return nil, fmt.Errorf("natscluster: %w", err)
	}
	c := &Cluster{
		opts:        o,
		dir:         dir,
		clientPorts: ports[:o.Size],
		routePorts:  ports[o.Size:],
		servers:     make([]*server.Server, o.Size),
	}
	for i := range c.servers {
		s, err := c.startServer(i)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.servers[i] = s
	}
	if err := c.waitReady(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("natscluster: cluster did not form: %w", err)
	}
	return c, nil
}

// freePorts reserves n distinct free loopback ports, all open at once so that they
// differ, and releases them for the servers.
func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// serverName is server i's name, unique in the cluster.
func serverName(i int) string { return "s" + strconv.Itoa(i) }

// serverOptions are server i's options; built anew for every (re)start because the
// server keeps and changes the ones it was given.
func (c *Cluster) serverOptions(i int) *server.Options {
	routes := make([]string, 0, len(c.routePorts))
	for _, p := range c.routePorts {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	return &server.Options{
		ServerName: serverName(i),
		Host:       "127.0.0.1",
		Port:       c.clientPorts[i],
		JetStream:  true,
		StoreDir:   filepath.Join(c.dir, serverName(i)),
		Cluster: server.ClusterOpts{
			Name: c.opts.Name,
			Host: "127.0.0.1",
			Port: c.routePorts[i],
		},
		Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		NoSigs:     true,
		NoLog:      !c.opts.Debug,
		MaxPayload: 1 << 20,
	}
}

// startServer starts server i and waits until it accepts clients.
func (c *Cluster) startServer(i int) (*server.Server, error) {
	o := c.serverOptions(i)
	if c.opts.ServerOptions != nil {
		var err error
		if o, err = c.opts.ServerOptions(i, Ports{Client: c.clientPorts, Route: c.routePorts}); err != nil {
			return nil, fmt.Errorf("natscluster: options of server %d: %w", i, err)
		}
		o.NoSigs, o.NoLog = true, !c.opts.Debug
	}
	if err := os.MkdirAll(o.StoreDir, 0o700); err != nil {
		return nil, fmt.Errorf("natscluster: store of %s: %w", o.ServerName, err)
	}
	s, err := server.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("natscluster: %s: %w", o.ServerName, err)
	}
	if c.opts.Debug {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(c.opts.WaitTimeout) {
		s.Shutdown()
		return nil, fmt.Errorf("natscluster: %s not ready for clients within %s", o.ServerName, c.opts.WaitTimeout)
	}
	return s, nil
}

// running returns the servers that are up, by index (nil entries are killed).
func (c *Cluster) running() []*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*server.Server(nil), c.servers...)
}

// waitReady waits until a meta leader exists that counts all servers as peers and
// every running server is current with the meta group.
func (c *Cluster) waitReady(ctx context.Context) error {
	return wait.Until(ctx, c.opts.WaitTimeout, 50*time.Millisecond, func(context.Context) (bool, error) {
		servers := c.running()
		l := c.MetaLeader()
		if l < 0 {
			return false, errors.New("no meta leader")
		}
		if n := len(servers[l].JetStreamClusterPeers()); n != len(servers) {
			return false, fmt.Errorf("meta leader %s sees %d of %d peers", serverName(l), n, len(servers))
		}
		for i, s := range servers {
			if s != nil && !s.JetStreamIsCurrent() {
				return false, fmt.Errorf("%s is not current", serverName(i))
			}
		}
		return true, nil
	})
}

// Size is the number of servers.
func (c *Cluster) Size() int { return c.opts.Size }

// URLs are the client URLs of all servers, comma separated (for nats.Connect and
// vclq's --nats), including those of killed servers: clients reconnect to them.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.clientPorts))
	for i := range c.clientPorts {
		urls[i] = c.URL(i)
	}
	return strings.Join(urls, ",")
}

// URL is server i's client URL.
func (c *Cluster) URL(i int) string {
	return "nats://127.0.0.1:" + strconv.Itoa(c.clientPorts[i])
}

// Name is server i's server name.
func (c *Cluster) Name(i int) string { return serverName(i) }

// StoreDir is server i's JetStream store directory.
func (c *Cluster) StoreDir(i int) string { return filepath.Join(c.dir, serverName(i)) }

// Server is server i, or nil while it is killed.
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[i]
}

// Kill shuts server i down (as a crash would end it, but with a clean shutdown of
// its files) and keeps its store for Restart. Killing a killed server does nothing.
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// Restart starts killed server i again with the same ports and store and waits,
// bounded by Options.WaitTimeout, until it rejoined (a meta leader counts it), is
// current, and reports healthy (its streams and consumers caught up).
func (c *Cluster) Restart(i int) error {
	c.mu.Lock()
	up := c.servers[i] != nil
	c.mu.Unlock()
	if up {
		return fmt.Errorf("natscluster: restart %s: it is running", serverName(i))
	}
	s, err := c.startServer(i)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
	if err := c.waitReady(context.Background()); err != nil {
		return fmt.Errorf("natscluster: restart %s: %w", serverName(i), err)
	}
	return c.waitHealthy(s)
}

// waitHealthy waits until s's health check (meta, streams, consumers) is ok.
func (c *Cluster) waitHealthy(s *server.Server) error {
	err := wait.Until(context.Background(), c.opts.WaitTimeout, 100*time.Millisecond, func(context.Context) (bool, error) {
		h := s.Healthz(nil)
		if h.Status == "ok" && h.Error == "" {
			return true, nil
		}
		return false, fmt.Errorf("healthz %s: %s", h.Status, h.Error)
	})
	if err != nil {
		return fmt.Errorf("natscluster: %s not healthy: %w", s.Name(), err)
	}
	return nil
}

// MetaLeader is the index of the JetStream meta leader, or -1.
func (c *Cluster) MetaLeader() int {
	return c.find(func(s *server.Server) bool { return s.JetStreamIsLeader() })
}

// StreamLeader is the index of the stream's leader, or -1.
func (c *Cluster) StreamLeader(stream string) int {
	return c.find(func(s *server.Server) bool { return s.JetStreamIsStreamLeader(Account, stream) })
}

// ConsumerLeader is the index of the consumer's leader, or -1.
func (c *Cluster) ConsumerLeader(stream, consumer string) int {
	return c.find(func(s *server.Server) bool { return s.JetStreamIsConsumerLeader(Account, stream, consumer) })
}

// find is the index of the first running server for which is holds, or -1.
func (c *Cluster) find(is func(*server.Server) bool) int {
	for i, s := range c.running() {
		if s != nil && is(s) {
			return i
		}
	}
	return -1
}

// WaitMetaLeader waits, bounded by ctx, until there is a meta leader and returns it.
func (c *Cluster) WaitMetaLeader(ctx context.Context) (int, error) {
	return c.waitIndex(ctx, "meta leader", c.MetaLeader)
}

// WaitStreamLeader waits, bounded by ctx, until the stream has a leader and returns it.
func (c *Cluster) WaitStreamLeader(ctx context.Context, stream string) (int, error) {
	return c.waitIndex(ctx, "leader of stream "+stream, func() int { return c.StreamLeader(stream) })
}

// WaitConsumerLeader waits, bounded by ctx, until the consumer has a leader and
// returns it.
func (c *Cluster) WaitConsumerLeader(ctx context.Context, stream, consumer string) (int, error) {
	return c.waitIndex(ctx, "leader of consumer "+stream+" > "+consumer, func() int { return c.ConsumerLeader(stream, consumer) })
}

// waitIndex polls get until it returns an index; ctx without a deadline is bounded
// by Options.WaitTimeout.
func (c *Cluster) waitIndex(ctx context.Context, what string, get func() int) (int, error) {
	idx := -1
	err := wait.Until(ctx, c.timeoutFor(ctx), 50*time.Millisecond, func(context.Context) (bool, error) {
		idx = get()
		return idx >= 0, nil
	})
	if err != nil {
		return -1, fmt.Errorf("natscluster: wait for %s: %w", what, err)
	}
	return idx, nil
}

// timeoutFor is what is left of ctx's deadline, else Options.WaitTimeout.
func (c *Cluster) timeoutFor(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		if left := time.Until(d); left > 0 {
			return left
		}
		return time.Millisecond
	}
	return c.opts.WaitTimeout
}

// StepDownStream asks the stream's leader to step down
// ($JS.API.STREAM.LEADER.STEPDOWN.<stream>) and waits, bounded by ctx, until another
// server leads it; it returns the new leader. The server's refusal (no such stream,
// no leader, not clustered) is returned as an error at once.
func (c *Cluster) StepDownStream(ctx context.Context, nc *nats.Conn, stream string) (int, error) {
	old := c.StreamLeader(stream)
	msg, err := nc.RequestWithContext(ctx, fmt.Sprintf(server.JSApiStreamLeaderStepDownT, stream), nil)
	if err != nil {
		return -1, fmt.Errorf("natscluster: step down leader of %s: %w", stream, err)
	}
	var resp server.JSApiStreamLeaderStepDownResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return -1, fmt.Errorf("natscluster: step down leader of %s: %w", stream, err)
	}
	if resp.Error != nil {
		return -1, fmt.Errorf("natscluster: step down leader of %s: %s", stream, resp.Error.Error())
	}
	return c.waitIndex(ctx, "a new leader of stream "+stream, func() int {
		if l := c.StreamLeader(stream); l != old {
			return l
		}
		return -1
	})
}

// Close shuts every running server down. The stores stay under the caller's dir.
func (c *Cluster) Close() {
	for i := range c.opts.Size {
		c.Kill(i)
	}
}
