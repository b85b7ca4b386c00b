package bridge

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/natsembed"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

// TestCrashBetweenClaimAndPublish: a bridge killed after publishing a claim's message
// but before committing the claim (message queued, row not pending, nothing in the
// outbox), or after committing it, loses and duplicates nothing once restarted.
func TestCrashBetweenClaimAndPublish(t *testing.T) {
	for _, point := range []string{pointClaimed, pointPublished} {
		t.Run(point, func(t *testing.T) {
			forEachSchema(t, func(t *testing.T, s *site) {
				j := testutil.StartVCLJetStream(t, streams.Options{})
				var ids []int64
				for c := firstVM; c < firstVM+4; c++ {
					_, rs := s.add(req{state: "new", computer: c})
					ids = append(ids, rs)
				}
				b := newBridge(t, s, j, Config{})
				b.hook = func(p string) error {
					if p == point {
						return errors.New("killed")
					}
					return nil
				}
				if err := b.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "simulated crash") {
					t.Fatalf("Run = %v, want the simulated crash", err)
				}
				before := len(queued(t, j))
				pending := s.count("SELECT COUNT(*) FROM request WHERE stateid = 14")
				t.Logf("at the crash: %d queued, %d pending", before, pending)
				if before != 1 {
					t.Fatalf("%d queued at the crash, want the first claim's message", before)
				}
				if point == pointPublished && pending != 0 || point == pointClaimed && pending != 1 {
					t.Fatalf("%d rows pending at the crash %s", pending, point)
				}
				b = newBridge(t, s, j, Config{})
				if _, err := b.PollOnce(context.Background()); err != nil {
					t.Fatal(err)
				}
				msgs := byReservation(queued(t, j))
				if len(msgs) != len(ids) || len(queued(t, j)) != len(ids) {
					t.Fatalf("%d queued after the restart, want %d, each once", len(queued(t, j)), len(ids))
				}
				for _, rs := range ids {
					if msgs[rs] == nil {
						t.Errorf("reservation %d lost", rs)
					}
					if log := s.loadlog(rs); len(log) != 1 {
						t.Errorf("reservation %d: loadlog %q, want one begin row", rs, log)
					}
				}
				if n := s.count("SELECT COUNT(*) FROM vclq_outbox WHERE published IS NULL"); n != 0 {
					t.Errorf("outbox holds %d", n)
				}
			})
		})
	}
}

// proxy is a TCP proxy to MariaDB that a test can cut and restore: a database outage
// as the bridge sees it.
type proxy struct {
	t      testing.TB
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
}

func startProxy(t testing.TB, target string) *proxy {
	p := &proxy{t: t, target: target, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.down)
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[u] = true, true
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close(); c.Close() }()
			go func() { _, _ = io.Copy(c, u); u.Close(); c.Close() }()
		}
	}()
}

// down closes the listener and every connection.
func (p *proxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
}

// up listens again on the same address.
func (p *proxy) up() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.serve(ln)
}

// successResult is a worker's result for a new request: reserved/reserved.
func successResult(m *messages.Request, seq uint64) *messages.Result {
	r := resultEvent(m, seq, messages.OutcomeSuccess, messages.StateReserved, messages.StateReserved)
	r.ImageID, r.ImageRevisionID = m.Image.ID, m.Image.RevisionID
	return r
}

// TestDatabaseOutage: the database goes away while rows are queued and events arrive;
// the bridge retries with backoff and, once the database is back, applies every event
// once and claims the rows that became due.
func TestDatabaseOutage(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, streams.Options{})
		cfg, err := mysql.ParseDSN(s.dsn)
		if err != nil {
			t.Fatal(err)
		}
		p := startProxy(t, cfg.Addr)
		cfg.Addr = p.addr
		cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout = time.Second, 2*time.Second, 2*time.Second
		viaProxy, err := sql.Open("mysql", cfg.FormatDSN())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { viaProxy.Close() })

		var first []int64
		for c := firstVM; c < firstVM+3; c++ {
			_, rs := s.add(req{state: "new", computer: c})
			first = append(first, rs)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b, err := New(ctx, viaProxy, j.JS, Config{ManagementNodes: []int64{mnOurs}, Interval: 100 * time.Millisecond,
			FetchWait: 100 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, EventAckWait: 2 * time.Second}, s.log)
		if err != nil {
			t.Fatal(err)
		}
		stop, _ := run(t, b)
		testutil.WaitFor(t, 20*time.Second, 50*time.Millisecond, func() error {
			if n := len(queued(t, j)); n != 3 {
				return fmt.Errorf("%d queued", n)
			}
			return nil
		})
		msgs := byReservation(queued(t, j))

		p.down()
		for i, rs := range first {
			m := msgs[rs]
			sendLoadlog(t, j, loadlogEvent(m, uint64(100+i), 1, messages.LoadStatusCheck, messages.PhaseBegin, ""))
			sendResult(t, j, successResult(m, uint64(100+i)))
		}
		var second []int64
		for c := firstVM + 3; c <= firstVM+4; c++ {
			_, rs := s.add(req{state: "new", computer: c})
			second = append(second, rs)
		}
		time.Sleep(2 * time.Second)
		if got := s.requestState(msgs[first[0]].Request.ID); got != "pending/new" {
			t.Fatalf("applied while the database was down? %s", got)
		}
		p.up()

		testutil.WaitFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			for _, rs := range first {
				if got := s.requestState(msgs[rs].Request.ID); got != "reserved/new" {
					return fmt.Errorf("reservation %d: %s", rs, got)
				}
			}
			if n := len(queued(t, j)); n != 5 {
				return fmt.Errorf("%d queued", n)
			}
			return nil
		})
		consumerIdle(t, j, 20*time.Second)
		stop()
		for _, rs := range first {
			if got := stepNames(s.loadlog(rs)); strings.Join(got, ",") != "begin,statuscheck,exited" {
				t.Errorf("reservation %d: loadlog %v", rs, got)
			}
		}
		for _, rs := range second {
			if got := stepNames(s.loadlog(rs)); strings.Join(got, ",") != "begin" {
				t.Errorf("reservation %d: loadlog %v", rs, got)
			}
		}
		if !strings.Contains(s.logs.String(), "bridge poll failed") || !strings.Contains(s.logs.String(), "could not apply events") {
			t.Error("the outage was not logged")
		}
	})
}

// TestNATSOutage: NATS restarts while the bridge runs; nothing is claimed while it is
// away, and afterwards every row is queued once and every event applied once.
func TestNATSOutage(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		dir := t.TempDir()
		srv, err := natsembed.Start(natsembed.Options{StoreDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		port := srv.Addr().(*net.TCPAddr).Port
		var srvMu sync.Mutex
		t.Cleanup(func() { srvMu.Lock(); srv.Stop(); srvMu.Unlock() })
		connect := func() (*nats.Conn, jetstream.JetStream) {
			nc, err := nats.Connect(srv.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			return nc, js
		}
		nc, js := connect()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := streams.Ensure(ctx, js, streams.Options{}); err != nil {
			t.Fatal(err)
		}
		j := &testutil.JetStream{NC: nc, JS: js, URL: srv.URL()}
		_, bjs := connect()

		var rss []int64
		for c := firstVM; c < firstVM+2; c++ {
			_, rs := s.add(req{state: "new", computer: c})
			rss = append(rss, rs)
		}
		b := newBridge(t, s, &testutil.JetStream{JS: bjs}, Config{EventAckWait: 2 * time.Second})
		// NATS goes away at the worst moment: after the poll found it connected, just
		// before the bridge claims the first row that becomes due.
		var armed atomic.Bool
		cut := make(chan struct{})
		b.hook = func(p string) error {
			if p == pointClaiming && armed.CompareAndSwap(true, false) {
				srvMu.Lock()
				srv.Stop()
				srvMu.Unlock()
				close(cut)
			}
			return nil
		}
		stop, _ := run(t, b)
		testutil.WaitFor(t, 20*time.Second, 50*time.Millisecond, func() error {
			if n := len(queued(t, j)); n != 2 {
				return fmt.Errorf("%d queued", n)
			}
			return nil
		})

		armed.Store(true)
		for c := firstVM + 2; c < firstVM+4; c++ {
			_, rs := s.add(req{state: "new", computer: c})
			rss = append(rss, rs)
		}
		select {
		case <-cut:
		case <-time.After(20 * time.Second):
			t.Fatal("the bridge did not try to claim the new rows")
		}
		time.Sleep(1500 * time.Millisecond)
		pendingWhileDown := s.count("SELECT COUNT(*) FROM request WHERE stateid = 14")
		t.Logf("%d rows pending while NATS was down", pendingWhileDown)

		srvMu.Lock()
		srv, err = natsembed.Start(natsembed.Options{StoreDir: dir, Port: port})
		srvMu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			if n := len(queued(t, j)); n != 4 {
				return fmt.Errorf("%d queued", n)
			}
			return nil
		})
		msgs := byReservation(queued(t, j))
		for i, rs := range rss {
			sendResult(t, j, successResult(msgs[rs], uint64(200+i)))
		}
		testutil.WaitFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			for _, rs := range rss {
				if got := s.requestState(msgs[rs].Request.ID); got != "reserved/new" {
					return fmt.Errorf("reservation %d: %s", rs, got)
				}
			}
			return nil
		})
		stop()
		if pendingWhileDown != 2 {
			t.Errorf("%d rows pending while NATS was down, want the 2 claimed before", pendingWhileDown)
		}
		for _, rs := range rss {
			if got := strings.Join(stepNames(s.loadlog(rs)), ","); got != "begin,exited" {
				t.Errorf("reservation %d: loadlog %s", rs, got)
			}
		}
		if len(queued(t, j)) != 4 {
			t.Error("a request was queued twice")
		}
	})
}

// TestOutboxLeftoverIsPublished: an entry left unpublished in the outbox (by a bridge
// that committed its claim the old way and died) is published by the next poll, once.
func TestOutboxLeftoverIsPublished(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, streams.Options{})
		_, rs := s.add(req{state: "new", computer: firstVM})
		b := newBridge(t, s, j, Config{})
		if _, err := b.PollOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
		msgs := queued(t, j)
		if len(msgs) != 1 {
			t.Fatalf("%d queued, want 1", len(msgs))
		}
		// The claim's entry as if its bridge died before marking it published, and an
		// entry never published.
		s.exec("UPDATE vclq_outbox SET published = NULL WHERE reservation_id = ?", rs)
		other := *msgs[0]
		other.Reservation.ID = rs + 1000
		payload, _ := json.Marshal(&other)
		s.exec("INSERT INTO vclq_outbox (msg_id, subject, payload, request_id, reservation_id, created) VALUES (?, ?, ?, ?, ?, NOW())",
			other.MsgID(), other.Kind.Subject(), payload, other.Request.ID, other.Reservation.ID)
		st, err := b.PollOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		n, left := len(queued(t, j)), s.count("SELECT COUNT(*) FROM vclq_outbox WHERE published IS NULL")
		t.Logf("poll %+v; %d queued, %d left unpublished", st, n, left)
		if st.Published != 2 || n != 2 || left != 0 {
			t.Errorf("published %d, queued %d (want 2: the duplicate dropped), %d left", st.Published, n, left)
		}
	})
}
