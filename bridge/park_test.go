package bridge

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/dlq"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
)

// poison makes every UPDATE of the reservations listed in vclq_test_poison fail
// permanently, as a site's trigger refusing a change does (SIGNAL: error 1644).
func (s *site) poison() {
	s.exec("CREATE TABLE vclq_test_poison (reservation_id int unsigned PRIMARY KEY)")
	s.exec(`CREATE TRIGGER vclq_test_poison BEFORE UPDATE ON reservation FOR EACH ROW
BEGIN
	IF EXISTS (SELECT 1 FROM vclq_test_poison p WHERE p.reservation_id = NEW.id) THEN
		SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poisoned by the test';
	END IF;
END`)
}

// addNew inserts n new requests on VM slots from first on and returns their ids.
func (s *site) addNew(first int64, n int) (reqs, ress []int64) {
	for i := range n {
		q, r := s.add(req{state: "new", computer: first + int64(i)})
		reqs, ress = append(reqs, q), append(ress, r)
	}
	return reqs, ress
}

// waitStates waits until every request is in want and returns how long it took.
func (s *site) waitStates(t *testing.T, reqs []int64, want string, total time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ph := strings.Repeat("?,", len(reqs))
	args := make([]any, len(reqs))
	for i, r := range reqs {
		args[i] = r
	}
	testutil.WaitFor(t, total, 20*time.Millisecond, func() error {
		if n := s.count("SELECT COUNT(*) FROM request r JOIN state st ON st.id = r.stateid WHERE st.name = '"+strings.Split(want, "/")[0]+"' AND r.id IN ("+ph[:len(ph)-1]+")", args...); n != len(reqs) {
			return fmt.Errorf("%d of %d requests %s", n, len(reqs), want)
		}
		return nil
	})
	return time.Since(start)
}

// TestPoisonedEventIsParkedAlone (issue 11 item 2): the result of one reservation
// cannot be applied (the site refuses the UPDATE for good) while 50 other reservations
// load. The others finish at the pace they have without it; the poisoned result is
// parked in VCL_DEADLETTERS with its reason and a WARNING row, a later event of the
// same reservation is parked behind it (its order holds); `vclq dlq replay` of both,
// once the cause is gone, applies them in order, once.
func TestPoisonedEventIsParkedAlone(t *testing.T) {
	for _, schema := range schemas {
		t.Run(schema, func(t *testing.T) {
			db, dsn := freshDB(t, schema)
			s := &site{t: t, db: db, dsn: dsn, schema: schema}
			s.log, s.logs = testLog(t)
			if err := bt.LoadSite(context.Background(), db, 101); err != nil {
				t.Fatal(err)
			}
			s.poison()
			j := testutil.StartVCLJetStream(t, e2eStreams())
			key, _ := NewSealKey(nil)
			startWorkers(t, j, 2, &bt.StateExit{SealTo: key.PublicKey()})
			b := newBridge(t, s, j, Config{SealKey: key, Interval: 100 * time.Millisecond})
			stop, _ := run(t, b)

			// Baseline: 50 reservations, nothing poisoned.
			base, _ := s.addNew(firstVM, 50)
			tBase := s.waitStates(t, base, "reserved/new", 120*time.Second)

			// 50 more, and one whose result the site refuses.
			_, bad := s.add(req{state: "new", computer: firstVM + 100})
			s.exec("INSERT INTO vclq_test_poison VALUES (?)", bad)
			others, _ := s.addNew(firstVM+50, 50)
			tPoisoned := s.waitStates(t, others, "reserved/new", 120*time.Second)
			t.Logf("50 reservations: %v without a poisoned event, %v beside one", tBase.Round(time.Millisecond), tPoisoned.Round(time.Millisecond))
			if tPoisoned > 2*tBase+5*time.Second {
				t.Errorf("the others took %v beside a poisoned event, %v without", tPoisoned, tBase)
			}

			// The poisoned result: parked with its reason, a WARNING row, the request
			// still pending/new.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			store, err := dlq.Open(ctx, j.JS)
			if err != nil {
				t.Fatal(err)
			}
			var parked []dlq.Entry
			testutil.WaitFor(t, 20*time.Second, 50*time.Millisecond, func() error {
				if parked, err = store.List(ctx, 0); err != nil || len(parked) != 1 {
					return fmt.Errorf("%d dead letters (%v)", len(parked), err)
				}
				return nil
			})
			e := parked[0]
			t.Logf("parked: %s seq %d reservation %d: %s", e.OriginalSubject, e.OriginalSeq, e.Reservation, e.Reason)
			if e.OriginalSubject != messages.ResultSubject(bad) || e.Reservation != bad || !strings.Contains(e.Reason, "poisoned by the test") {
				t.Errorf("dead letter %+v", e)
			}
			var breq int64
			if err := db.QueryRow("SELECT requestid FROM reservation WHERE id = ?", bad).Scan(&breq); err != nil {
				t.Fatal(err)
			}
			if got := s.requestState(breq); got != "pending/new" {
				t.Errorf("poisoned request %s, want pending/new", got)
			}
			log := s.loadlog(bad)
			if last := log[len(log)-1]; !strings.HasPrefix(last, "WARNING:vclq bridge: event vcl.events.result.") || !strings.Contains(last, "poisoned by the test") {
				t.Errorf("poisoned reservation's last row %q, want the WARNING", last)
			}

			// A later event of the same reservation is parked behind it.
			m := &messages.Request{Kind: messages.KindNew, Reservation: messages.ReservationInfo{ID: bad}}
			note := loadlogEvent(m, 1<<40, 1, messages.LoadInfo, messages.PhaseInfo, "after the poisoned result")
			note.RequestID = breq
			sendLoadlog(t, j, note)
			testutil.WaitFor(t, 20*time.Second, 50*time.Millisecond, func() error {
				if parked, err = store.List(ctx, 0); err != nil || len(parked) != 2 {
					return fmt.Errorf("%d dead letters (%v)", len(parked), err)
				}
				return nil
			})
			if !strings.Contains(parked[1].Reason, "earlier event of the reservation is parked") {
				t.Errorf("follower parked with %q", parked[1].Reason)
			}
			if n := len(s.loadlog(bad)); n != len(log) {
				t.Errorf("the follower wrote a row while parked")
			}

			resultID := parkedResultID(t, store, parked)
			// Cured and replayed, in the dead-letter order: applied, in order, once.
			s.exec("DELETE FROM vclq_test_poison")
			for _, p := range parked {
				if _, err := store.Replay(ctx, p.Seq); err != nil {
					t.Fatal(err)
				}
			}
			s.waitStates(t, []int64{breq}, "reserved/new", 30*time.Second)
			consumerIdle(t, j, 20*time.Second)
			stop()
			log = s.loadlog(bad)
			tail := stepNames(log[len(log)-2:])
			applied := s.count("SELECT COUNT(*) FROM vclq_applied WHERE event_id IN (?, ?)", note.MsgID(), resultID)
			t.Logf("after replay: %d rows, tail %v, %d of 2 replayed events applied", len(log), tail, applied)
			// The result applied first: the follower, a note of the job after its
			// result, is recorded and not written (had it overtaken the result, it would
			// be a row before exited).
			if strings.Join(tail, ",") != "WARNING,exited" || applied != 2 {
				t.Errorf("after replay the reservation's rows end %q, %d of 2 events applied", log[len(log)-2:], applied)
			}
			if n := s.count("SELECT COUNT(*) FROM vclq_applied WHERE event_id LIKE 'parked-%'"); n != 0 {
				t.Errorf("%d parking markers left", n)
			}
			var pw string
			if err := db.QueryRow("SELECT COALESCE(pw, '') FROM reservation WHERE id = ?", bad).Scan(&pw); err != nil || pw == "" {
				t.Errorf("replayed result stored no password (%v)", err)
			}
		})
	}
}

// parkedResultID is the event id of the parked result (the first dead letter).
func parkedResultID(t *testing.T, store *dlq.Store, parked []dlq.Entry) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := store.Show(ctx, parked[0].Seq)
	if err != nil {
		t.Fatal(err)
	}
	r, err := messages.DecodeResult(e.Payload)
	if err != nil {
		t.Fatalf("parked result: %v", err)
	}
	return r.MsgID()
}
