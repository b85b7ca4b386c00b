package bridge

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

// publishEvent stores an event in VCL_EVENTS as a worker's publisher would.
func publishEvent(t testing.TB, j *testutil.JetStream, subject string, v any, id string) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := j.JS.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data}, jetstream.WithMsgID(id)); err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
}

func loadlogEvent(m *messages.Request, seq uint64, step int, name string, phase messages.Phase, info string) *messages.Loadlog {
	return &messages.Loadlog{
		Schema: 1, ReservationID: m.Reservation.ID, RequestID: m.Request.ID, ComputerID: m.Computer.ID, Kind: m.Kind,
		Name: name, Phase: phase, Step: step, Info: info, Time: time.Now().UTC().Truncate(time.Second), Worker: "test-worker", RequestSeq: seq,
	}
}

func resultEvent(m *messages.Request, seq uint64, outcome messages.Outcome, reqState, compState string) *messages.Result {
	r := &messages.Result{
		Schema: 1, ReservationID: m.Reservation.ID, RequestID: m.Request.ID, ComputerID: m.Computer.ID, Kind: m.Kind,
		Outcome: outcome, RequestState: reqState, ComputerState: compState, Worker: "test-worker",
		Time: time.Now().UTC().Truncate(time.Second), Deliveries: 1, RequestSeq: seq,
	}
	if outcome != messages.OutcomeSuccess {
		r.ErrorCode, r.Error = "load_failed", "the VM did not boot within 600s"
	}
	return r
}

func sendLoadlog(t testing.TB, j *testutil.JetStream, l *messages.Loadlog) {
	publishEvent(t, j, messages.LoadlogSubject(l.ReservationID), l, l.MsgID())
}

func sendResult(t testing.TB, j *testutil.JetStream, r *messages.Result) {
	publishEvent(t, j, messages.ResultSubject(r.ReservationID), r, r.MsgID())
}

// snapshot dumps the VCL tables the bridge writes, for before/after comparisons.
func (s *site) snapshot() string {
	s.t.Helper()
	var b strings.Builder
	for _, table := range []string{"request", "reservation", "computer", "computerloadlog", "image", "imagerevision", "reservationaccounts", "vclq_applied"} {
		rows, err := s.db.Query("SELECT * FROM `" + table + "` ORDER BY 1, 2")
		if err != nil {
			s.t.Fatal(err)
		}
		cols, _ := rows.Columns()
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				s.t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s:", table)
			for i, v := range vals {
				if table == "vclq_applied" && cols[i] == "applied" {
					continue
				}
				fmt.Fprintf(&b, " %s=%s", cols[i], v)
			}
			b.WriteByte('\n')
		}
		rows.Close()
	}
	return b.String()
}

// consumerIdle waits until the bridge's consumer has nothing pending or unacked.
func consumerIdle(t testing.TB, j *testutil.JetStream, total time.Duration) {
	t.Helper()
	testutil.WaitFor(t, total, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := j.JS.Consumer(ctx, messages.StreamEvents, messages.ConsumerBridge)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("consumer: %d pending, %d unacked", info.NumPending, info.NumAckPending)
		}
		return nil
	})
}

// eventsScenario claims a set of rows and publishes, as workers would, the loadlog and
// result events of each; it returns a function that checks the database.
type scenario struct {
	s                                           *site
	key                                         *SealKey
	newReq, reload, reclaim, image, fail, stale *messages.Request
	ids                                         map[string][2]int64 // name → request, reservation
}

func newScenario(t *testing.T, s *site, j *testutil.JetStream) *scenario {
	sc := &scenario{s: s, ids: map[string][2]int64{}}
	var err error
	if sc.key, err = NewSealKey(nil); err != nil {
		t.Fatal(err)
	}
	add := func(name string, r req) {
		q, rs := s.add(r)
		sc.ids[name] = [2]int64{q, rs}
	}
	add("new", req{state: "new", computer: 110, accounts: []int64{userBob}})
	add("reload", req{state: "reload", computer: 113, rev: revWin, user: 2})
	add("reclaim", req{state: "timeout", last: "inuse", computer: 115, start: -time.Hour})
	add("image", req{state: "image", last: "inuse", computer: 111, rev: revCustom, start: -time.Hour})
	add("fail", req{state: "new", computer: 112, user: userCarol})
	add("stale", req{state: "new", computer: 114, user: userDave})
	// A site whose computerloadstate lacks a name vclq uses.
	s.exec("DELETE FROM computerloadstate WHERE loadstatename = 'connected'")
	b := newBridge(t, s, j, Config{SealKey: sc.key})
	if _, err := b.PollOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	msgs := byReservation(queued(t, j))
	sc.newReq, sc.reload, sc.reclaim = msgs[sc.ids["new"][1]], msgs[sc.ids["reload"][1]], msgs[sc.ids["reclaim"][1]]
	sc.image, sc.fail, sc.stale = msgs[sc.ids["image"][1]], msgs[sc.ids["fail"][1]], msgs[sc.ids["stale"][1]]
	if len(msgs) != 6 {
		t.Fatalf("%d queued, want 6", len(msgs))
	}
	// The stale one: the web UI deleted it while it was pending.
	s.exec("UPDATE request SET stateid = 1, laststateid = 14 WHERE id = ?", sc.ids["stale"][0])
	return sc
}

// publish sends every event of the scenario.
func (sc *scenario) publish(t *testing.T, j *testutil.JetStream) {
	seal := func(key *SealKey, pw string) string {
		s, err := SealPassword(key.PublicKey(), []byte(pw))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	n := sc.newReq
	sendLoadlog(t, j, loadlogEvent(n, 11, 1, messages.LoadStatusCheck, messages.PhaseBegin, ""))
	sendLoadlog(t, j, loadlogEvent(n, 11, 1, messages.LoadStatusCheck, messages.PhaseEnd, "RELOAD"))
	sendLoadlog(t, j, loadlogEvent(n, 11, 2, messages.LoadTransferVM, messages.PhaseBegin, "copying vmwarelinux-centos7-v1"))
	sendLoadlog(t, j, loadlogEvent(n, 11, 2, messages.LoadInfo, messages.PhaseInfo, "linked clone from the shared base disk"))
	sendLoadlog(t, j, loadlogEvent(n, 11, 3, messages.LoadConnected, messages.PhaseBegin, "missing at this site"))
	// A name vclq itself does not know (an older worker, a typo): kept as info.
	unknown := loadlogEvent(n, 11, 4, messages.LoadInfo, messages.PhaseBegin, "stage nine")
	raw, _ := json.Marshal(unknown)
	raw = []byte(strings.Replace(string(raw), `"name":"info"`, `"name":"xcatstage9"`, 1))
	publishEvent(t, j, messages.LoadlogSubject(n.Reservation.ID), json.RawMessage(raw), "unknown-name-1")
	sendLoadlog(t, j, loadlogEvent(n, 11, 5, messages.LoadNodeReady, messages.PhaseBegin, ""))
	res := resultEvent(n, 11, messages.OutcomeSuccess, messages.StateReserved, messages.StateReserved)
	res.IP, res.ImageID, res.ImageRevisionID = "192.0.2.110", imgLinux, revLinux
	other, _ := NewSealKey(nil)
	res.Passwords = []messages.SealedPassword{
		{UserID: userAlice, Login: "alice", Sealed: seal(sc.key, "Alice-Pw-0123456")},
		{UserID: userBob, Login: "bob", Sealed: seal(sc.key, "Bob-Pw-6543210")},
		{UserID: userBob, Login: "bob", Sealed: seal(other, "Wrong-Key-Pw-999")},
	}
	sendResult(t, j, res)

	res = resultEvent(sc.reload, 12, messages.OutcomeSuccess, messages.StateComplete, messages.StateAvailable)
	res.ImageID, res.ImageRevisionID = imgWin, revWin
	sendResult(t, j, res)

	sendLoadlog(t, j, loadlogEvent(sc.reclaim, 13, 1, messages.LoadTimeout, messages.PhaseBegin, ""))
	sendResult(t, j, resultEvent(sc.reclaim, 13, messages.OutcomeSuccess, messages.StateComplete, messages.StateReload))

	res = resultEvent(sc.image, 14, messages.OutcomeSuccess, messages.StateComplete, messages.StateReload)
	res.ImageSizeMB = 7000
	res.NewImage = &messages.TargetImage{ImageID: imgCustom, Name: "vmwarelinux-centos7custom-v1", RevisionID: 150, Revision: 1}
	sendResult(t, j, res)

	sendLoadlog(t, j, loadlogEvent(sc.fail, 15, 1, messages.LoadMachineBooted, messages.PhaseBegin, ""))
	sendLoadlog(t, j, loadlogEvent(sc.fail, 15, 1, messages.LoadMachineBooted, messages.PhaseFail, "timeout"))
	sendResult(t, j, resultEvent(sc.fail, 15, messages.OutcomeFailed, messages.StateFailed, messages.StateFailed))
	// A fenced-out job's event stored after the request's result: late, no row.
	sendLoadlog(t, j, loadlogEvent(sc.fail, 15, 3, messages.LoadMachineBooted, messages.PhaseBegin, "fenced-out node"))

	sendResult(t, j, resultEvent(sc.stale, 16, messages.OutcomeSuccess, messages.StateReserved, messages.StateReserved))

	// Garbage on an event subject: parked, nothing else stops.
	publishEvent(t, j, messages.ResultSubject(sc.newReq.Reservation.ID), json.RawMessage(`{"schema":1,"bogus":true}`), "garbage-1")
}

func stepNames(rows []string) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i], _, _ = strings.Cut(r, ":")
	}
	return out
}

// check verifies the database after every event was applied.
func (sc *scenario) check(t *testing.T) {
	s := sc.s
	if got := s.requestState(sc.ids["new"][0]); got != "reserved/new" {
		t.Errorf("new: request %s, want reserved/new", got)
	}
	if got := s.computerState(110); got != "reserved" {
		t.Errorf("new: computer %s", got)
	}
	log := s.loadlog(sc.ids["new"][1])
	// The last WARNING: the garbage event on its subject, parked.
	wantNames := []string{"begin", "statuscheck", "transfervm", "info", "info", "info", "nodeready", "WARNING", "exited", "WARNING"}
	if !slices.Equal(stepNames(log), wantNames) {
		t.Errorf("new: loadlog %q, want names %v", log, wantNames)
	}
	if !slices.ContainsFunc(log, func(r string) bool { return strings.HasPrefix(r, "info:connected: missing at this site") }) ||
		!slices.ContainsFunc(log, func(r string) bool { return strings.HasPrefix(r, "info:xcatstage9: stage nine") }) {
		t.Errorf("unknown names are not info rows with the name: %q", log)
	}
	var pw sql.NullString
	if err := s.db.QueryRow("SELECT pw FROM reservation WHERE id = ?", sc.ids["new"][1]).Scan(&pw); err != nil || pw.String != "Alice-Pw-0123456" {
		t.Errorf("reservation.pw = %q (%v), want the opened password", pw.String, err)
	}
	if err := s.db.QueryRow("SELECT password FROM reservationaccounts WHERE reservationid = ? AND userid = ?", sc.ids["new"][1], userBob).Scan(&pw); err != nil || pw.String != "Bob-Pw-6543210" {
		t.Errorf("reservationaccounts.password = %q (%v)", pw.String, err)
	}
	for _, secret := range []string{"Alice-Pw-0123456", "Bob-Pw-6543210", "Wrong-Key-Pw-999"} {
		if strings.Contains(s.logs.String(), secret) {
			t.Errorf("a password appears in the bridge's log")
		}
	}

	if got := s.requestState(sc.ids["reload"][0]); got != "complete/reload" {
		t.Errorf("reload: request %s", got)
	}
	var cur, rev int64
	if err := s.db.QueryRow("SELECT currentimageid, imagerevisionid FROM computer WHERE id = 113").Scan(&cur, &rev); err != nil || cur != imgWin || rev != revWin {
		t.Errorf("reload: computer image %d/%d (%v), want %d/%d", cur, rev, err, imgWin, revWin)
	}
	if got := s.computerState(113); got != "available" {
		t.Errorf("reload: computer %s", got)
	}

	if got := s.requestState(sc.ids["reclaim"][0]); got != "complete/timeout" {
		t.Errorf("reclaim: request %s", got)
	}
	if got := s.computerState(115); got != "reload" {
		t.Errorf("reclaim: computer %s", got)
	}
	// The reload request reclaim.pm would insert, for each computer left in reload.
	for _, c := range []int64{115, 111} {
		if n := s.count(`SELECT COUNT(*) FROM request r JOIN reservation rs ON rs.requestid = r.id JOIN user u ON u.id = r.userid
			WHERE rs.computerid = ? AND r.stateid = 19 AND r.laststateid = 19 AND u.unityid = 'vclreload' AND rs.managementnodeid = ?`, c, mnOurs); n != 1 {
			t.Errorf("computer %d: %d reload requests, want 1", c, n)
		}
	}

	if got := s.requestState(sc.ids["image"][0]); got != "complete/image" {
		t.Errorf("image: request %s", got)
	}
	var size int64
	if err := s.db.QueryRow("SELECT size FROM image WHERE id = ?", imgCustom).Scan(&size); err != nil || size != 7000 {
		t.Errorf("image size %d (%v), want 7000", size, err)
	}
	if n := s.count("SELECT COUNT(*) FROM imagerevision WHERE id = 150 AND imageid = ? AND revision = 1 AND imagename = 'vmwarelinux-centos7custom-v1'", imgCustom); n != 1 {
		t.Errorf("new image revision rows: %d", n)
	}

	if got := s.requestState(sc.ids["fail"][0]); got != "failed/new" {
		t.Errorf("fail: request %s", got)
	}
	if got := s.computerState(112); got != "failed" {
		t.Errorf("fail: computer %s", got)
	}
	log = s.loadlog(sc.ids["fail"][1])
	if !slices.Equal(stepNames(log), []string{"begin", "machinebooted", "failed", "exited"}) || !strings.Contains(log[2], "did not boot") {
		t.Errorf("fail: loadlog %q", log)
	}

	if got := s.requestState(sc.ids["stale"][0]); got != "deleted/pending" {
		t.Errorf("stale result changed the request: %s", got)
	}
	for _, row := range s.loadlog(sc.ids["fail"][1]) {
		if strings.Contains(row, "fenced-out") {
			t.Errorf("a late loadlog event became a row: %q", row)
		}
	}
	if got := s.computerState(114); got != "available" {
		t.Errorf("stale result changed the computer: %s", got)
	}
}

// TestEventsApplyAndReplayChangesNothing: loadlog and result events become VCL rows
// and states; replaying the whole stream into a fresh consumer changes nothing.
func TestEventsApplyAndReplayChangesNothing(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, streams.Options{})
		sc := newScenario(t, s, j)
		sc.publish(t, j)
		// Events only: a bridge of another management node polls nothing here.
		b := newBridge(t, s, j, Config{SealKey: sc.key, ManagementNodes: []int64{mnOther}})
		stop, _ := run(t, b)
		testutil.WaitFor(t, 20*time.Second, 50*time.Millisecond, func() error {
			if got := s.requestState(sc.ids["fail"][0]); got != "failed/new" {
				return fmt.Errorf("fail request %s", got)
			}
			return nil
		})
		consumerIdle(t, j, 20*time.Second)
		stop()
		sc.check(t)
		if !strings.Contains(s.logs.String(), "event cannot be applied") {
			t.Error("the garbage event was not reported")
		}
		before := s.snapshot()

		// Replay everything: a new consumer from the first event.
		ctx := context.Background()
		if err := j.JS.DeleteConsumer(ctx, messages.StreamEvents, messages.ConsumerBridge); err != nil {
			t.Fatal(err)
		}
		b = newBridge(t, s, j, Config{SealKey: sc.key, ManagementNodes: []int64{mnOther}})
		stop, _ = run(t, b)
		consumerIdle(t, j, 20*time.Second)
		stop()
		if after := s.snapshot(); after != before {
			t.Errorf("replaying the event stream changed the database:\n%s", diff(before, after))
		}
	})
}

// TestBridgeCrashAfterApplyBeforeAck: a bridge that dies between its commit and the
// ack (every third event) is restarted until the stream is drained; the redelivered
// events apply no second time.
func TestBridgeCrashAfterApplyBeforeAck(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, streams.Options{})
		sc := newScenario(t, s, j)
		sc.publish(t, j)
		crashes := 0
		for range 30 {
			b := newBridge(t, s, j, Config{SealKey: sc.key, ManagementNodes: []int64{mnOther}, EventAckWait: time.Second})
			n := 0
			b.hook = func(point string) error {
				if point == pointApplied {
					if n++; n == 3 {
						return errors.New("killed after commit, before ack")
					}
				}
				return nil
			}
			if !runUntilIdle(t, b, j) {
				break
			}
			crashes++
		}
		if crashes == 0 {
			t.Fatal("the bridge never crashed")
		}
		t.Logf("%d crashes", crashes)
		sc.check(t)
	})
}

// runUntilIdle runs b until it crashes (true) or its consumer is drained (false).
func runUntilIdle(t testing.TB, b *Bridge, j *testutil.JetStream) (crashed bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- b.Run(ctx) }()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case err := <-errc:
			if err == nil {
				t.Fatal("bridge stopped without error")
			}
			return true
		case <-deadline:
			t.Fatal("bridge neither crashed nor drained its consumer")
		case <-time.After(200 * time.Millisecond):
			if idle(j) {
				cancel()
				if err := <-errc; err != nil {
					return true
				}
				return false
			}
		}
	}
}

func idle(j *testutil.JetStream) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := j.JS.Consumer(ctx, messages.StreamEvents, messages.ConsumerBridge)
	if err != nil {
		return false
	}
	info, err := c.Info(ctx)
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0
}

// diff shows the lines of a that are not in b and the other way round.
func diff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out strings.Builder
	for _, l := range al {
		if !slices.Contains(bl, l) {
			out.WriteString("- " + l + "\n")
		}
	}
	for _, l := range bl {
		if !slices.Contains(al, l) {
			out.WriteString("+ " + l + "\n")
		}
	}
	return out.String()
}
