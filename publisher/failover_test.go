package publisher_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/natsembed"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/publisher"
	"github.com/vclq/vclq/streams"
)

func loadlogOf(reservation int64, step int) *messages.Loadlog {
	l := loadlog(step, messages.PhaseBegin, "")
	l.ReservationID = reservation
	return l
}

// call is one publish call of the failover test.
type call struct {
	key        string   // the subject of its events ("results" for results)
	ids        []string // the dedup ids it published, in order
	start, end time.Time
	err        error
}

// publishLoop calls publish with the next ids until stop is closed, pausing between
// calls, and returns every call.
func publishLoop(stop <-chan struct{}, next func(i int) (string, []string, func() error)) []call {
	var calls []call
	for i := 0; ; i++ {
		select {
		case <-stop:
			return calls
		default:
		}
		key, ids, publish := next(i)
		c := call{key: key, ids: ids, start: time.Now()}
		c.err = publish()
		c.end = time.Now()
		calls = append(calls, c)
		time.Sleep(5 * time.Millisecond)
	}
}

// A server that is shut down for ~9 s and restarted on the same port and store while
// Loadlog, LoadlogBatch and Result publish: every call returns only once its events
// are stored (none returns while the server is down), every event is stored exactly
// once, and in the order of the calls (and of each batch). The per-try timeout is
// 1 s: retries bounded by a number of tries would give up long before the server is
// back; the budget (60 s) does not.
func TestPublishOutlastsServerRestart(t *testing.T) {
	const outage = 9 * time.Second
	dir := t.TempDir()
	s, err := natsembed.Start(natsembed.Options{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	port := s.Addr().(*net.TCPAddr).Port
	var servers []*natsembed.Server
	servers = append(servers, s)
	t.Cleanup(func() {
		for _, s := range servers {
			s.Stop()
		}
	})
	nc, err := nats.Connect(s.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, js, streams.Options{}); err != nil {
		t.Fatal(err)
	}
	var logs testutil.SyncBuffer
	p := publisher.New(js, publisher.Options{Timeout: time.Second}, zerolog.New(&logs))
	p.WatchAsyncErrors(nc)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var single, batch, results []call
	wg.Add(3)
	go func() {
		defer wg.Done()
		single = publishLoop(stop, func(i int) (string, []string, func() error) {
			l := loadlogOf(int64(71000+i/1000), i%1000+1) // steps are 1..1000
			return messages.LoadlogSubject(l.ReservationID), []string{l.MsgID()}, func() error { return p.Loadlog(context.Background(), l) }
		})
	}()
	go func() {
		defer wg.Done()
		batch = publishLoop(stop, func(i int) (string, []string, func() error) {
			var ls []*messages.Loadlog
			var ids []string
			reservation := int64(72000 + i/100)
			for k := range 8 {
				l := loadlogOf(reservation, 8*(i%100)+k+1)
				ls = append(ls, l)
				ids = append(ids, l.MsgID())
			}
			return messages.LoadlogSubject(reservation), ids, func() error { return p.LoadlogBatch(context.Background(), ls) }
		})
	}()
	go func() {
		defer wg.Done()
		results = publishLoop(stop, func(i int) (string, []string, func() error) {
			r := result()
			r.ReservationID, r.RequestSeq = int64(80000+i), uint64(i+1)
			return "results", []string{r.MsgID()}, func() error { return p.Result(context.Background(), r) }
		})
	}()

	time.Sleep(700 * time.Millisecond)
	s.Stop()
	down := time.Now() // every call after this waits for the restart
	time.Sleep(outage)
	s2, err := natsembed.Start(natsembed.Options{Port: port, StoreDir: dir})
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("restart on port %d: %v", port, err)
	}
	up := time.Now()
	servers = append(servers, s2)
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		t.Fatal("publishers still blocked 90 s after the restart")
	}

	// What was stored, per subject, in stream order.
	storedIDs := map[string][]string{}
	seen := map[string]int{}
	for _, m := range stored(t, &testutil.JetStream{JS: js}, messages.StreamEvents, "") {
		id := m.Header.Get(messages.HeaderMsgID)
		seen[id]++
		key := m.Subject
		if strings.HasPrefix(key, "vcl.events.result.") {
			key = "results"
		}
		storedIDs[key] = append(storedIDs[key], id)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event %s stored %d times", id, n)
		}
	}
	for _, tc := range []struct {
		name    string
		calls   []call
		ordered bool
	}{
		{"Loadlog", single, true},
		{"LoadlogBatch", batch, true},
		{"Result", results, false},
	} {
		want := map[string][]string{}
		published, storedN := 0, 0
		straddled, failed, early := 0, 0, 0
		for _, c := range tc.calls {
			if c.err != nil {
				failed++
				t.Errorf("%s %v: %v", tc.name, c.ids, c.err)
				continue
			}
			want[c.key] = append(want[c.key], c.ids...)
			published += len(c.ids)
			if c.start.Before(up) && c.end.After(down) {
				straddled++
			}
			if c.end.After(down) && c.end.Before(up) {
				early++ // returned nil while the server was down: cannot be stored
			}
		}
		for key := range want {
			storedN += len(storedIDs[key])
		}
		t.Logf("%s: %d calls (%d across the outage, %d failed), %d events published, %d stored", tc.name, len(tc.calls), straddled, failed, published, storedN)
		if straddled == 0 {
			t.Errorf("%s: no call was in flight during the outage: the test proves nothing", tc.name)
		}
		if early > 0 {
			t.Errorf("%s: %d calls returned success while the server was down", tc.name, early)
		}
		for key, w := range want {
			got := storedIDs[key]
			if len(got) != len(w) {
				t.Errorf("%s: %s: %d events stored, %d published", tc.name, key, len(got), len(w))
			}
			if !tc.ordered {
				continue
			}
			for i := range min(len(got), len(w)) {
				if got[i] != w[i] {
					t.Errorf("%s: %s: stored event %d is %s, want %s (the publish order)", tc.name, key, i, got[i], w[i])
					break
				}
			}
		}
	}
	if t.Failed() {
		t.Logf("publisher log:\n%s", logs.String())
	}
}

// startDenyingServer runs a server where user "pub" may not publish results, and
// returns a publisher connection for "pub" (with the publisher watching its
// asynchronous errors) after creating the streams as "admin".
func startDenyingServer(t *testing.T) jetstream.JetStream {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		Users: []*server.User{
			{Username: "admin", Password: "admin"},
			{Username: "pub", Password: "pub", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"vcl.events.loadlog.>", "$JS.API.>"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	connect := func(user string) jetstream.JetStream {
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, user))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	ajs := connect("admin")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, ajs, streams.Options{}); err != nil {
		t.Fatal(err)
	}
	return connect("pub")
}

// What no retry can store fails at once, long before the budget or even one try's
// timeout: an invalid event, a denied publish, a message larger than the server
// takes, a subject no stream takes.
func TestRejectedPublishFailsAtOnce(t *testing.T) {
	huge := make([]byte, 2<<20)
	tests := []struct {
		name    string
		js      func(t *testing.T) jetstream.JetStream
		publish func(ctx context.Context, p *publisher.Publisher) error
		wantErr error
	}{
		{"invalid loadlog event", vclStreams, func(ctx context.Context, p *publisher.Publisher) error {
			l := loadlog(1, messages.PhaseBegin, "")
			l.Name = "no such state"
			return p.Loadlog(ctx, l)
		}, publisher.ErrInvalidEvent},
		{"invalid event in a batch", vclStreams, func(ctx context.Context, p *publisher.Publisher) error {
			l := loadlog(2, messages.PhaseBegin, "")
			l.Name = "not a state either"
			return p.LoadlogBatch(ctx, []*messages.Loadlog{loadlog(1, messages.PhaseBegin, ""), l})
		}, publisher.ErrInvalidEvent},
		{"denied publish", startDenyingServer, func(ctx context.Context, p *publisher.Publisher) error {
			return p.Result(ctx, result())
		}, publisher.ErrRejected},
		{"message too large", vclStreams, func(ctx context.Context, p *publisher.Publisher) error {
			return p.DeadLetter(ctx, publisher.DeadLetter{Data: huge, Subject: "vcl.new", Seq: 1, Kind: messages.KindNew, ReservationID: 7001, Reason: "test"})
		}, publisher.ErrRejected},
		{"no stream takes the subject", func(t *testing.T) jetstream.JetStream { return testutil.StartJetStream(t).JS }, func(ctx context.Context, p *publisher.Publisher) error {
			return p.Result(ctx, result())
		}, publisher.ErrRejected},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			js := tc.js(t)
			p := publisher.New(js, publisher.Options{Timeout: 5 * time.Second}, zerolog.Nop())
			p.WatchAsyncErrors(js.Conn())
			start := time.Now()
			err := tc.publish(context.Background(), p)
			elapsed := time.Since(start)
			t.Logf("after %s: %v", elapsed.Round(time.Millisecond), err)
			if !errors.Is(err, tc.wantErr) || !publisher.IsPermanent(err) {
				t.Fatalf("err %v, want %v (permanent)", err, tc.wantErr)
			}
			if elapsed > 2*time.Second {
				t.Fatalf("took %s: a rejection must not be retried", elapsed)
			}
		})
	}
}

func vclStreams(t *testing.T) jetstream.JetStream {
	return testutil.StartVCLJetStream(t, streams.Options{}).JS
}
