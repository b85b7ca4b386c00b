package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// startWorkers runs n worker pools with the state_exit test handler until the test
// ends.
func startWorkers(t *testing.T, j *testutil.JetStream, n int, h worker.Handler) {
	t.Helper()
	for i := range n {
		p, err := worker.New(j.JS, j.NC, h, worker.Config{
			ID: fmt.Sprintf("e2e-worker-%d", i), Concurrency: 3, HeartbeatInterval: 200 * time.Millisecond,
			PollWait: 300 * time.Millisecond, RetryDelay: 50 * time.Millisecond, ShutdownGrace: 2 * time.Second,
			StopTimeout: 2 * time.Second, LeaseTTL: 5 * time.Second, DisableSweeper: i > 0,
		}, zerolog.Nop())
		if err != nil {
			t.Fatalf("worker.New: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Errorf("worker %d did not stop", i)
			}
		})
	}
}

// siteRows are the fixture site's requests in several states, and what VCL's web UI
// must see once they went through the bridge and the workers.
type siteRow struct {
	name                 string
	r                    req
	request, reservation int64
	wantRequest          string // state/laststate
	wantComputer         string
	wantSteps            string // loadlog names, comma separated
	reload               bool   // the result queues a reload, which ends complete/reload
}

func siteRows() []*siteRow {
	load := "begin,statuscheck,loadimageblade,doesimageexists,startload,transfervm,vmsetupconfig,startvm,machinebooted,loadimagecomplete"
	return []*siteRow{
		{name: "new linux", r: req{state: "new", computer: 110, accounts: []int64{userBob}},
			wantRequest: "reserved/new", wantComputer: "reserved", wantSteps: load + ",addinguser,nodeready,exited"},
		{name: "new windows", r: req{state: "new", computer: 111, rev: revWin, user: userCarol, start: 10 * time.Minute},
			wantRequest: "reserved/new", wantComputer: "reserved", wantSteps: load + ",addinguser,nodeready,exited"},
		{name: "reserved, user connected", r: req{state: "reserved", last: "new", computer: 112, user: userDave, remoteIP: "203.0.113.7"},
			wantRequest: "inuse/reserved", wantComputer: "inuse", wantSteps: "begin,reserved,postreserve,connected,exited"},
		{name: "timeout", r: req{state: "timeout", last: "inuse", computer: 113, start: -2 * time.Hour},
			wantRequest: "complete/timeout", wantComputer: "available", wantSteps: "begin,timeout,exited", reload: true},
		{name: "deleted before connecting", r: req{state: "deleted", last: "reserved", computer: 114, user: userBob},
			wantRequest: "complete/deleted", wantComputer: "available", wantSteps: "begin,deleted,exited"},
		{name: "image capture", r: req{state: "image", last: "inuse", computer: 115, rev: revCustom, start: -time.Hour},
			wantRequest: "complete/image", wantComputer: "available", wantSteps: "begin,info,exited", reload: true},
		{name: "not due yet", r: req{state: "new", computer: 110, start: 3 * time.Hour},
			wantRequest: "new/new", wantComputer: "", wantSteps: ""},
		{name: "bad: OS vclq cannot run", r: req{state: "new", computer: 113, rev: bt.RevSolaris, start: time.Minute},
			wantRequest: "failed/new", wantComputer: "", wantSteps: "failed"},
	}
}

// checkSite verifies the end state of siteRows.
func checkSite(t *testing.T, s *site, rows []*siteRow) {
	t.Helper()
	for _, r := range rows {
		if got := s.requestState(r.request); got != r.wantRequest {
			t.Errorf("%s: request %s, want %s", r.name, got, r.wantRequest)
		}
		if r.wantComputer != "" {
			if got := s.computerState(r.r.computer); got != r.wantComputer {
				t.Errorf("%s: computer %d %s, want %s", r.name, r.r.computer, got, r.wantComputer)
			}
		}
		if got := strings.Join(stepNames(s.loadlog(r.reservation)), ","); got != r.wantSteps {
			t.Errorf("%s: loadlog %s\n want %s", r.name, got, r.wantSteps)
		}
		if r.reload {
			var req, res int64
			if err := s.db.QueryRow(`SELECT r.id, rs.id FROM request r JOIN reservation rs ON rs.requestid = r.id
				WHERE rs.computerid = ? AND r.laststateid = 19 AND r.id > ?`, r.r.computer, r.request).Scan(&req, &res); err != nil {
				t.Errorf("%s: no reload request: %v", r.name, err)
				continue
			}
			if got := s.requestState(req); got != "complete/reload" {
				t.Errorf("%s: reload request %s", r.name, got)
			}
			if got := strings.Join(stepNames(s.loadlog(res)), ","); !strings.HasPrefix(got, "begin,statuscheck") || !strings.HasSuffix(got, "nodeready,exited") {
				t.Errorf("%s: reload loadlog %s", r.name, got)
			}
		}
	}
	// Passwords the web UI shows for reservations that reached reserved/inuse.
	for _, r := range rows[:3] {
		var pw string
		if err := s.db.QueryRow("SELECT COALESCE(pw, '') FROM reservation WHERE id = ?", r.reservation).Scan(&pw); err != nil || len(pw) != 16 {
			t.Errorf("%s: reservation.pw %d characters (%v), want the worker's 16", r.name, len(pw), err)
		}
	}
	var size int64
	if err := s.db.QueryRow("SELECT size FROM image WHERE id = ?", imgCustom).Scan(&size); err != nil || size != 4096 {
		t.Errorf("captured image size %d (%v)", size, err)
	}
	var cur int64
	if err := s.db.QueryRow("SELECT currentimageid FROM computer WHERE id = 111").Scan(&cur); err != nil || cur != imgWin {
		t.Errorf("computer 111 current image %d (%v), want windows", cur, err)
	}
	// Each reservation the bridge handled: one begin and one exited row, never two.
	if n := s.count(`SELECT COUNT(*) FROM (SELECT l.reservationid, s.loadstatename, COUNT(*) c FROM computerloadlog l
		JOIN computerloadstate s ON s.id = l.loadstateid WHERE s.loadstatename IN ('begin', 'exited')
		GROUP BY l.reservationid, s.loadstatename HAVING c > 1) d`); n != 0 {
		t.Errorf("%d reservations with a duplicated begin or exited row", n)
	}
	if n := s.count("SELECT COUNT(*) FROM vclq_outbox WHERE published IS NULL"); n != 0 {
		t.Errorf("outbox holds %d", n)
	}
}

func addRows(s *site, rows []*siteRow) {
	for _, r := range rows {
		r.request, r.reservation = s.add(r.r)
	}
}

// waitSite waits until every row that should finish did.
func waitSite(t *testing.T, s *site, rows []*siteRow, total time.Duration) {
	t.Helper()
	testutil.WaitFor(t, total, 100*time.Millisecond, func() error {
		for _, r := range rows {
			if got := s.requestState(r.request); got != r.wantRequest {
				return fmt.Errorf("%s: %s", r.name, got)
			}
			if r.wantComputer != "" && s.computerState(r.r.computer) != r.wantComputer {
				return fmt.Errorf("%s: computer %s", r.name, s.computerState(r.r.computer))
			}
		}
		if n := s.count("SELECT COUNT(*) FROM request WHERE laststateid = 19 AND stateid <> 12"); n != 0 {
			return fmt.Errorf("%d reload requests not complete", n)
		}
		return nil
	})
}

func e2eStreams() streams.Options { return streams.Options{AckWait: 5 * time.Second, MaxDeliver: 5} }

// TestEndToEnd: the fixture site bridged end to end: DB → bridge → NATS → workers →
// events → bridge → DB, ending in the states and loadlog rows VCL's web UI reads.
func TestEndToEnd(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, e2eStreams())
		key, _ := NewSealKey(nil)
		rows := siteRows()
		addRows(s, rows)
		var failing atomic.Int64
		startWorkers(t, j, 2, &bt.StateExit{SealTo: key.PublicKey(), Step: 5 * time.Millisecond,
			Fail: func(r *messages.Request) bool { return r.Reservation.ID == failing.Load() }})
		b := newBridge(t, s, j, Config{SealKey: key, Interval: 200 * time.Millisecond})
		stop, _ := run(t, b)
		waitSite(t, s, rows, 60*time.Second)
		consumerIdle(t, j, 20*time.Second)
		checkSite(t, s, rows)

		// Then a load that fails in the worker: VCL's failed states and the reason.
		failReq, res := s.add(req{state: "new", computer: 114, user: userCarol})
		failing.Store(res)
		testutil.WaitFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			if got := s.requestState(failReq); got != "failed/new" {
				return fmt.Errorf("failing request: %s", got)
			}
			return nil
		})
		consumerIdle(t, j, 20*time.Second)
		stop()
		if got := s.computerState(114); got != "failed" {
			t.Errorf("failed load: computer %s, want failed", got)
		}
		log := s.loadlog(res)
		if got := strings.Join(stepNames(log), ","); got != "begin,statuscheck,loadimageblade,doesimageexists,startload,transfervm,vmsetupconfig,failed,exited" {
			t.Errorf("failed load: loadlog %s", got)
		}
		if !slices.ContainsFunc(log, func(r string) bool { return strings.HasPrefix(r, "failed:simulated:") }) {
			t.Errorf("failed load: no failed row with the worker's error: %q", log)
		}
	})
}

// TestTwoBridgesOneDatabase: two bridges (and two worker pools) on one database:
// every row is processed exactly once.
func TestTwoBridgesOneDatabase(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, e2eStreams())
		key, _ := NewSealKey(nil)
		rows := siteRows()
		addRows(s, rows)
		startWorkers(t, j, 2, &bt.StateExit{SealTo: key.PublicKey(), Step: 5 * time.Millisecond})
		var claims [2]atomic.Int64
		for i := range 2 {
			b := newBridge(t, s, j, Config{SealKey: key, Interval: 150 * time.Millisecond})
			b.hook = func(p string) error {
				if p == pointClaimed {
					claims[i].Add(1)
				}
				return nil
			}
			run(t, b)
		}
		waitSite(t, s, rows, 60*time.Second)
		consumerIdle(t, j, 20*time.Second)
		checkSite(t, s, rows)
		t.Logf("claims: bridge 1 %d, bridge 2 %d", claims[0].Load(), claims[1].Load())
		if total := claims[0].Load() + claims[1].Load(); total != 8 { // 6 rows + 2 reloads
			t.Errorf("%d claims in all, want 8", total)
		}
	})
}

// TestBridgeCrashEndToEnd: the bridge is killed at every crash point in turn (after a
// claim, after a publish, after applying an event) and restarted, while workers run;
// nothing is lost or duplicated.
func TestBridgeCrashEndToEnd(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, e2eStreams())
		key, _ := NewSealKey(nil)
		rows := siteRows()
		addRows(s, rows)
		startWorkers(t, j, 1, &bt.StateExit{SealTo: key.PublicKey(), Step: 5 * time.Millisecond})
		points := []string{pointClaimed, pointPublished, pointApplied, pointApplied, pointClaimed, pointApplied}
		crashes := 0
		var mu sync.Mutex
		for _, point := range points {
			b := newBridge(t, s, j, Config{SealKey: key, Interval: 150 * time.Millisecond, EventAckWait: time.Second})
			n := 0
			b.hook = func(p string) error {
				mu.Lock()
				defer mu.Unlock()
				if p == point {
					if n++; n == 2 {
						return errors.New("killed at " + p)
					}
				}
				return nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err := b.Run(ctx)
			cancel()
			if err != nil {
				crashes++
			}
		}
		t.Logf("%d crashes", crashes)
		if crashes < 3 {
			t.Errorf("only %d crashes", crashes)
		}
		b := newBridge(t, s, j, Config{SealKey: key, Interval: 150 * time.Millisecond, EventAckWait: time.Second})
		stop, _ := run(t, b)
		waitSite(t, s, rows, 60*time.Second)
		consumerIdle(t, j, 20*time.Second)
		stop()
		checkSite(t, s, rows)
	})
}
