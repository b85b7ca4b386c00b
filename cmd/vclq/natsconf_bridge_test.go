package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
)

// serverLog keeps the lines of the servers' own log that report a permission
// violation ("Publish Violation - ...", "Subscription Violation - ..."): the server's
// side of a refusal, whoever the client is.
type serverLog struct {
	mu    sync.Mutex
	lines []string
}

var _ server.Logger = (*serverLog)(nil)

func (l *serverLog) keep(format string, v ...any) {
	if s := fmt.Sprintf(format, v...); strings.Contains(s, "Violation") {
		l.mu.Lock()
		l.lines = append(l.lines, s)
		l.mu.Unlock()
	}
}

func (l *serverLog) Noticef(format string, v ...any) { l.keep(format, v...) }
func (l *serverLog) Warnf(format string, v ...any)   { l.keep(format, v...) }
func (l *serverLog) Fatalf(format string, v ...any)  { l.keep(format, v...) }
func (l *serverLog) Errorf(format string, v ...any)  { l.keep(format, v...) }
func (l *serverLog) Debugf(format string, v ...any)  { l.keep(format, v...) }
func (l *serverLog) Tracef(format string, v ...any)  { l.keep(format, v...) }

// since returns the violations logged after the first n.
func (l *serverLog) since(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines[n:]...)
}

func (l *serverLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// watchViolations installs a serverLog on the site's three servers.
func (s *natsSite) watchViolations() *serverLog {
	l := &serverLog{}
	for i := range 3 {
		s.cluster.Server(i).SetLogger(l, false, false)
	}
	return l
}

// bridgeFlow runs the real `vclq bridge` (in process, as the CLI runs it) with the
// bridge user's nkey, inbox prefix and TLS, --no-ensure, against a VCL database made
// by bridgetest on MariaDB: request rows inserted the way VCL's web UI does are
// published by the bridge, run by the site's worker (sim handler, the worker's
// credentials), and their results come back into the database. Neither the bridge's
// log nor the servers' log may report a permission violation.
func (s *natsSite) bridgeFlow(t *testing.T, violations *serverLog) {
	if err := bt.Reachable(context.Background()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("MariaDB at %s unreachable under CI: %v", bt.Addr(), err)
		}
		t.Skipf("MariaDB at %s unreachable: %v", bt.Addr(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := bt.Create(ctx, bt.SchemaOwn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Drop)
	if err := bt.LoadSite(ctx, d.SQL, 0); err != nil {
		t.Fatal(err)
	}
	type row struct {
		r                     bt.Req
		wantRequest, wantComp string
		request, reservation  int64
	}
	// The sim handler ends every flow as VCL's state modules do: new → reserved,
	// reserved → inuse, a reclaim → the computer available.
	rows := []*row{
		{r: bt.Req{State: "new", Computer: 110, Accounts: []int64{bt.UserBob}}, wantRequest: "reserved/new", wantComp: "reserved"},
		{r: bt.Req{State: "new", Computer: 111, Rev: bt.RevWin, User: bt.UserCarol}, wantRequest: "reserved/new", wantComp: "reserved"},
		{r: bt.Req{State: "new", Computer: 112}, wantRequest: "reserved/new", wantComp: "reserved"},
		{r: bt.Req{State: "reserved", Last: "new", Computer: 113, User: bt.UserDave, RemoteIP: "203.0.113.5"}, wantRequest: "inuse/reserved", wantComp: "inuse"},
		{r: bt.Req{State: "deleted", Last: "reserved", Computer: 114}, wantRequest: "complete/deleted", wantComp: "available"},
		{r: bt.Req{State: "timeout", Last: "inuse", Computer: 115, Start: -time.Hour}, wantRequest: "complete/timeout", wantComp: "available"},
	}
	for _, r := range rows {
		if r.request, r.reservation, err = bt.AddRequest(ctx, d.SQL, r.r); err != nil {
			t.Fatal(err)
		}
	}

	mark := violations.len()
	var bridgeErr testutil.SyncBuffer
	bctx, stop := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		args := append([]string{"bridge", "--mysql", d.DSN, "--management-node", fmt.Sprint(bt.MNOurs), "--interval", "200ms",
			"--no-ensure", "--startup-timeout", "30s"}, s.flags("bridge")...)
		done <- run(bctx, args, strings.NewReader(""), &testutil.SyncBuffer{}, &bridgeErr)
	}()
	stopped := false
	stopBridge := func() {
		if stopped {
			return
		}
		stopped = true
		stop()
		select {
		case code := <-done:
			if code != exitOK {
				t.Errorf("vclq bridge exited %d", code)
			}
		case <-time.After(30 * time.Second):
			t.Error("vclq bridge did not stop within 30s")
		}
	}
	t.Cleanup(func() {
		stopBridge()
		if t.Failed() {
			t.Logf("--- bridge log ---\n%s", bridgeErr.String())
		}
	})

	testutil.WaitFor(t, 90*time.Second, 100*time.Millisecond, func() error {
		select {
		case code := <-done:
			stopped = true
			return fmt.Errorf("vclq bridge exited %d early:\n%s", code, bridgeErr.String())
		default:
		}
		for _, r := range rows {
			got, err := bt.RequestState(ctx, d.SQL, r.request)
			if err != nil {
				return err
			}
			comp, err := bt.ComputerState(ctx, d.SQL, r.r.Computer)
			if err != nil {
				return err
			}
			if got != r.wantRequest || comp != r.wantComp {
				return fmt.Errorf("request %d: %s, computer %d %s; want %s, %s", r.request, got, r.r.Computer, comp, r.wantRequest, r.wantComp)
			}
		}
		return nil
	})
	// An event the bridge cannot apply (it does not decode), published with the
	// worker's credentials: the bridge parks it as a dead letter (vcl.dlq.unknown.<id>)
	// and marks its reservation parked.
	res := rows[0].reservation
	_, wjs, werrs := s.connect(t, "worker")
	if _, err := wjs.Publish(ctx, messages.SubjectResultPrefix+strconv.FormatInt(res, 10), []byte("not an event"),
		jetstream.WithMsgID("natsconf-poison")); err != nil {
		t.Fatalf("publish an undecodable event as worker: %v (async %q)", err, werrs.all())
	}
	testutil.WaitFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		var n int
		if err := d.SQL.QueryRowContext(ctx, "SELECT COUNT(*) FROM vclq_applied WHERE reservation_id = ? AND event_id LIKE 'parked-%'", res).Scan(&n); err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("reservation %d: %d parked events, want 1", res, n)
		}
		return nil
	})
	_, ajs, _ := s.connect(t, "admin")
	dl, err := ajs.Stream(ctx, messages.StreamDeadLetters)
	if err != nil {
		t.Fatal(err)
	}
	subj := messages.DeadLetterSubject("", res)
	m, err := dl.GetLastMsgForSubject(ctx, subj)
	if err != nil {
		t.Fatalf("the parked event is not a dead letter on %s: %v", subj, err)
	}
	if got := m.Header.Get(messages.HeaderWorker); got != "vclq-bridge" {
		t.Errorf("dead letter %d on %s: worker header %q, want vclq-bridge", m.Sequence, subj, got)
	}
	t.Logf("an undecodable event of reservation %d was parked by the bridge as dead letter %d on %s", res, m.Sequence, subj)

	var loadlog int
	if err := d.SQL.QueryRowContext(ctx, "SELECT COUNT(*) FROM computerloadlog").Scan(&loadlog); err != nil {
		t.Fatal(err)
	}
	stopBridge()
	t.Logf("vclq bridge as the bridge user: %d requests published from the database, run by the worker, every request and computer in VCL's end state; %d loadlog rows",
		len(rows), loadlog)

	if log := bridgeErr.String(); strings.Contains(log, "Violation") || strings.Contains(log, "nats asynchronous error") {
		t.Errorf("the bridge logged a permission violation or asynchronous error:\n%s", log)
	}
	if v := violations.since(mark); len(v) > 0 {
		t.Errorf("the servers logged %d permission violations while the bridge ran:\n%s", len(v), strings.Join(v, "\n"))
	} else {
		t.Logf("the servers logged no permission violation while the bridge ran")
	}
}

// TestProductionNatsPlaceholders: docs/deploy.md says the server refuses to start
// while a placeholder of users.conf is left. The repository's files as they are (the
// configuration check `nats-server -t` runs the same parser): refused.
func TestProductionNatsPlaceholders(t *testing.T) {
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("%s/nats-%d.conf", natsConfDir, i)
		_, err := server.ProcessConfigFile(name)
		if err == nil || !strings.Contains(err.Error(), "Not a valid public nkey for a user") {
			t.Errorf("%s with users.conf's placeholders: %v, want a refused nkey", name, err)
			continue
		}
		at := regexp.MustCompile(`[^\s/]+\.conf:\d+:\d+: Not a valid public nkey for a user`).FindAllString(err.Error(), -1)
		t.Logf("%s refused (the TLS files aside): %q", name, at)
	}
}
