package bench

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/bridge"
	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

// Bridge sizes.
const (
	bridgeRows        = 1000 // requests bridged DB → NATS
	bridgeResults     = 400  // of them get events back: 3 loadlog begins + 1 result each
	bridgeExtraVMs    = 194  // VM slots beyond the fixture's 6
	bridgeEventsPerRq = 4
)

// Bridge measures the VCL bridge against plain SQL on the same MariaDB: rows/s from
// the request table to VCL_REQUESTS (read, join, compare-and-set claim with its begin
// row and outbox entry, publish, outbox mark) and events/s from VCL_EVENTS back into
// the database (fetch, decode, one transaction per event with its dedup row, ack). The
// anchors are loops doing only the essential writes of each path, one transaction per
// item, with no NATS at all.
func Bridge(ctx context.Context, w io.Writer) error {
	fmt.Fprintf(w, "## Bridge: rows/s and events/s vs plain SQL\n\n")
	if err := bt.Reachable(ctx); err != nil {
		fmt.Fprintf(w, "Skipped: MariaDB at %s is unreachable (%v). Start it with scripts/test-deps.sh.\n", bt.Addr(), err)
		return nil
	}
	d, err := bt.Create(ctx, bt.SchemaOwn)
	if err != nil {
		fmt.Fprintf(w, "Skipped: cannot create the test database from the source tree's schema (%v).\n", err)
		return nil
	}
	defer d.Drop()
	if err := bt.LoadSite(ctx, d.SQL, bridgeExtraVMs); err != nil {
		return err
	}
	dsn, err := bridge.DSN(d.DSN)
	if err != nil {
		return err
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return err
	}
	defer db.Close()

	j, err := startJetStream(ctx, "bridge", streams.Options{})
	if err != nil {
		return err
	}
	defer j.close()
	js := j.js

	vms := int64(6 + bridgeExtraVMs)
	add := func(n int) ([]int64, error) {
		var ids []int64
		for i := range n {
			_, rs, err := bt.AddRequest(ctx, db, bt.Req{State: "new", Computer: bt.FirstVM + int64(i)%vms})
			if err != nil {
				return nil, err
			}
			ids = append(ids, rs)
		}
		return ids, nil
	}

	// DB → NATS through the bridge.
	if _, err := add(bridgeRows); err != nil {
		return err
	}
	b, err := bridge.New(ctx, db, js, bridge.Config{ManagementNodes: []int64{bt.MNOurs}, PollLimit: bridgeRows}, zerolog.Nop())
	if err != nil {
		return err
	}
	start := time.Now()
	claimed := 0
	for claimed < bridgeRows {
		st, err := b.PollOnce(ctx)
		if err != nil {
			return err
		}
		if st.Claimed == 0 {
			return fmt.Errorf("bridge claimed %d of %d rows", claimed, bridgeRows)
		}
		claimed += st.Claimed
	}
	bridgeOut := time.Since(start)

	// Anchor: the same rows' essential writes, plain SQL.
	anchorIDs, err := add(bridgeRows)
	if err != nil {
		return err
	}
	start = time.Now()
	for _, rs := range anchorIDs {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE request r JOIN reservation rs ON rs.requestid = r.id SET r.stateid = 14, r.laststateid = 13
			WHERE rs.id = ? AND r.stateid = 13 AND r.laststateid = 13`, rs); err != nil {
			tx.Rollback() //nolint:errcheck
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO computerloadlog (reservationid, computerid, loadstateid, timestamp, additionalinfo)
			SELECT id, computerid, 1, NOW(), 'anchor' FROM reservation WHERE id = ?`, rs); err != nil {
			tx.Rollback() //nolint:errcheck
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	plainOut := time.Since(start)

	// NATS → DB: events for the first bridgeResults reservations, stored beforehand.
	msgs, err := bridgedRequests(ctx, js)
	if err != nil {
		return err
	}
	events := 0
	now := time.Now().UTC().Truncate(time.Second)
	for i, m := range msgs {
		if i == bridgeResults {
			break
		}
		for step, name := range []string{messages.LoadStatusCheck, messages.LoadTransferVM, messages.LoadNodeReady} {
			l := &messages.Loadlog{Schema: 1, ReservationID: m.Reservation.ID, RequestID: m.Request.ID, ComputerID: m.Computer.ID,
				Kind: m.Kind, Name: name, Phase: messages.PhaseBegin, Step: step + 1, Time: now, Worker: "bench", RequestSeq: uint64(i + 1)}
			if err := publishJSON(ctx, js, messages.LoadlogSubject(l.ReservationID), l, l.MsgID()); err != nil {
				return err
			}
			events++
		}
		r := &messages.Result{Schema: 1, ReservationID: m.Reservation.ID, RequestID: m.Request.ID, ComputerID: m.Computer.ID,
			Kind: m.Kind, Outcome: messages.OutcomeSuccess, RequestState: messages.StateReserved, ComputerState: messages.StateReserved,
			ImageID: m.Image.ID, ImageRevisionID: m.Image.RevisionID, Worker: "bench", Time: now, Deliveries: 1, RequestSeq: uint64(i + 1)}
		if err := publishJSON(ctx, js, messages.ResultSubject(r.ReservationID), r, r.MsgID()); err != nil {
			return err
		}
		events++
	}
	// A bridge of another management node: it applies events and polls nothing.
	eb, err := bridge.New(ctx, db, js, bridge.Config{ManagementNodes: []int64{bt.MNOther}, Interval: time.Hour, FetchWait: 100 * time.Millisecond}, zerolog.Nop())
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- eb.Run(rctx) }()
	var applied int
	for applied < events {
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM vclq_applied").Scan(&applied); err != nil {
			cancel()
			return err
		}
		if time.Since(start) > 10*time.Minute {
			cancel()
			return fmt.Errorf("only %d of %d events applied in 10 minutes", applied, events)
		}
		time.Sleep(20 * time.Millisecond)
	}
	bridgeBack := time.Since(start)
	cancel()
	if err := <-done; err != nil {
		return err
	}

	// Anchor: the same events' essential writes, plain SQL.
	if _, err := db.ExecContext(ctx, "CREATE TABLE anchor_applied (event_id varchar(191) PRIMARY KEY) ENGINE=InnoDB"); err != nil {
		return err
	}
	start = time.Now()
	for i := range events {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		rs := anchorIDs[i/bridgeEventsPerRq]
		q := `INSERT INTO computerloadlog (reservationid, computerid, loadstateid, timestamp, additionalinfo) SELECT id, computerid, 1, NOW(), '' FROM reservation WHERE id = ?`
		if i%bridgeEventsPerRq == bridgeEventsPerRq-1 {
			q = `UPDATE request r JOIN reservation rs ON rs.requestid = r.id SET r.stateid = 3 WHERE rs.id = ?`
		}
		if _, err := tx.ExecContext(ctx, "INSERT IGNORE INTO anchor_applied (event_id) VALUES (?)", fmt.Sprint("anchor-", i)); err != nil {
			tx.Rollback() //nolint:errcheck
			return err
		}
		if _, err := tx.ExecContext(ctx, q, rs); err != nil {
			tx.Rollback() //nolint:errcheck
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	plainBack := time.Since(start)

	// 50 reservations' events interleaved, one of them poisoned.
	par, parTime, err := poisonedParallel(ctx, db, js, msgs[bridgeResults:bridgeResults+bridgeParallel+1])
	if err != nil {
		return err
	}

	rate := func(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }
	fmt.Fprintf(w, "MariaDB at %s (vclq's minimal VCL schema, %d VM slots), embedded nats-server, one bridge, sequential. "+
		"Each row and each event is one database transaction, as in production.\n\n", bt.Addr(), vms)
	fmt.Fprintf(w, "| path | items | time | per second |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(w, "| bridge DB → NATS: poll, join, claim (CAS + begin row + outbox), publish, mark published | %d rows | %s | %.0f rows/s |\n",
		bridgeRows, bridgeOut.Round(time.Millisecond), rate(bridgeRows, bridgeOut))
	fmt.Fprintf(w, "| plain SQL anchor: CAS UPDATE + loadlog INSERT, one transaction per row | %d rows | %s | %.0f rows/s |\n",
		bridgeRows, plainOut.Round(time.Millisecond), rate(bridgeRows, plainOut))
	fmt.Fprintf(w, "| bridge NATS → DB: fetch, decode, transaction with dedup row (loadlog row or state_exit), ack | %d events | %s | %.0f events/s |\n",
		events, bridgeBack.Round(time.Millisecond), rate(events, bridgeBack))
	fmt.Fprintf(w, "| plain SQL anchor: dedup INSERT + loadlog INSERT or state UPDATE, one transaction per event | %d events | %s | %.0f events/s |\n",
		events, plainBack.Round(time.Millisecond), rate(events, plainBack))
	fmt.Fprintf(w, "| bridge NATS → DB: %d reservations' events interleaved, one more reservation's result refused by the site (a trigger), parked as a dead letter | %d events | %s | %.0f events/s |\n\n",
		bridgeParallel, par, parTime.Round(time.Millisecond), rate(par, parTime))
	fmt.Fprintf(w, "The bridge reaches %.0f%% of the plain-SQL rate out and %.0f%% back. Out, it does more per row than the anchor "+
		"(the join of computer, host, profile, image, OS and users; the outbox write and mark; a synchronous publish). "+
		"Back, events go one at a time (the consumer's MaxAckPending is 1, so rows keep stream order across bridges and crashes); "+
		"an event the site refuses for good is parked at once (a dead letter, a WARNING row, later events of its reservation parked behind it), "+
		"so the other reservations' events go at the sequential rate (%.0f%% of it here); "+
		"a result is a larger transaction than the anchor's (request, reservation, computer, loadlog rows).\n",
		100*rate(bridgeRows, bridgeOut)/rate(bridgeRows, plainOut), 100*rate(events, bridgeBack)/rate(events, plainBack),
		100*rate(par, parTime)/rate(events, bridgeBack))
	return nil
}

// bridgeParallel is how many reservations' events are interleaved beside a poisoned one.
const bridgeParallel = 50

// poisonedParallel publishes the events of msgs' reservations interleaved (every
// reservation's first step, then every second step, ...), the site refusing the result
// of the last one (a trigger, error 1644), and measures how long a bridge takes to
// apply every event of the others and park the poisoned result. It returns the number
// of events the others had and the time.
func poisonedParallel(ctx context.Context, db *sql.DB, js jetstream.JetStream, msgs []*messages.Request) (int, time.Duration, error) {
	bad := msgs[len(msgs)-1].Reservation.ID
	for _, q := range []string{
		"CREATE TABLE bench_poison (reservation_id int unsigned PRIMARY KEY)",
		`CREATE TRIGGER bench_poison BEFORE UPDATE ON reservation FOR EACH ROW
BEGIN
	IF EXISTS (SELECT 1 FROM bench_poison p WHERE p.reservation_id = NEW.id) THEN
		SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poisoned by the benchmark';
	END IF;
END`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return 0, 0, err
		}
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO bench_poison VALUES (?)", bad); err != nil {
		return 0, 0, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	steps := []string{messages.LoadStatusCheck, messages.LoadTransferVM, messages.LoadNodeReady}
	for step := range len(steps) + 1 {
		for _, m := range msgs {
			var err error
			if step < len(steps) {
				l := &messages.Loadlog{Schema: 1, ReservationID: m.Reservation.ID, RequestID: m.Request.ID, ComputerID: m.Computer.ID,
					Kind: m.Kind, Name: steps[step], Phase: messages.PhaseBegin, Step: step + 1, Time: now, Worker: "bench", RequestSeq: 1}
				err = publishJSON(ctx, js, messages.LoadlogSubject(l.ReservationID), l, l.MsgID())
			} else {
				r := &messages.Result{Schema: 1, ReservationID: m.Reservation.ID, RequestID: m.Request.ID, ComputerID: m.Computer.ID,
					Kind: m.Kind, Outcome: messages.OutcomeSuccess, RequestState: messages.StateReserved, ComputerState: messages.StateReserved,
					ImageID: m.Image.ID, ImageRevisionID: m.Image.RevisionID, Worker: "bench", Time: now, Deliveries: 1, RequestSeq: 1}
				err = publishJSON(ctx, js, messages.ResultSubject(r.ReservationID), r, r.MsgID())
			}
			if err != nil {
				return 0, 0, err
			}
		}
	}
	others := (len(msgs) - 1) * (len(steps) + 1)
	eb, err := bridge.New(ctx, db, js, bridge.Config{ManagementNodes: []int64{bt.MNOther}, Interval: time.Hour, FetchWait: 100 * time.Millisecond}, zerolog.Nop())
	if err != nil {
		return 0, 0, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- eb.Run(rctx) }()
	first, last := msgs[0].Reservation.ID, msgs[len(msgs)-2].Reservation.ID
	for {
		var applied, parked int
		if err := db.QueryRowContext(ctx, `SELECT COALESCE(SUM(event_id NOT LIKE 'parked-%' AND reservation_id <> ?), 0), COALESCE(SUM(event_id LIKE 'parked-%'), 0)
			FROM vclq_applied WHERE reservation_id BETWEEN ? AND ? OR reservation_id = ?`, bad, first, last, bad).Scan(&applied, &parked); err != nil {
			return 0, 0, err
		}
		if applied >= others && parked == 1 {
			break
		}
		if time.Since(start) > 5*time.Minute {
			return 0, 0, fmt.Errorf("poisoned parallel: %d of %d events applied, %d parked in 5 minutes", applied, others, parked)
		}
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(start)
	cancel()
	if err := <-done; err != nil {
		return 0, 0, err
	}
	return others, elapsed, nil
}

// bridgedRequests reads the requests the bridge queued, in order.
func bridgedRequests(ctx context.Context, js jetstream.JetStream) ([]*messages.Request, error) {
	st, err := js.Stream(ctx, messages.StreamRequests)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []*messages.Request
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			return nil, err
		}
		var r messages.Request
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return nil, err
		}
		out = append(out, &r)
	}
	return out, nil
}

func publishJSON(ctx context.Context, js jetstream.JetStream, subject string, v any, id string) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = js.Publish(ctx, subject, data, jetstream.WithMsgID(id))
	return err
}
