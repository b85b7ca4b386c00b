package bridge

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/messages"
)

// PollStats counts what one poll did.
type PollStats struct {
	Due       int // rows read
	Claimed   int // claimed (committed after its message was published)
	Failed    int // failed in the database: could not become a valid message
	Lost      int // changed or taken by someone else (a vcld, another bridge) first
	Published int // messages acknowledged by JetStream (claims and outbox leftovers)
	Expired   int // inuse requests past their end, moved to timeout/inuse
}

// candidate is one due request/reservation row.
type candidate struct {
	requestID, reservationID, computerID int64
	stateID, lastStateID                 int
	modified                             sql.NullTime // raw request.datemodified, for the compare-and-set
	modifiedUnix, startUnix, endUnix     sql.NullInt64
	remoteIP                             sql.NullString
	reservations                         int
}

// PollOnce publishes what is left in the outbox, claims and publishes every due row
// (each claim commits only after its publish was acknowledged), and then checks in. Nothing
// is claimed, and the management node does not check in, while NATS is down: the
// connection check skips the poll, and a claim whose publish fails (NATS went during
// the poll) is rolled back and ends the poll.
func (b *Bridge) PollOnce(ctx context.Context) (PollStats, error) {
	var st PollStats
	n, err := b.FlushOutbox(ctx)
	st.Published += n
	if err != nil {
		return st, err
	}
	if nc := b.js.Conn(); nc != nil && !nc.IsConnected() {
		// Claimed rows would wait in pending/X, out of reach of a legacy vcld too.
		return st, fmt.Errorf("NATS is %s: nothing is claimed until it is back", nc.Status())
	}
	if st.Expired, err = b.expire(ctx); err != nil {
		return st, err
	}
	cands, err := b.due(ctx)
	if err != nil {
		return st, err
	}
	st.Due = len(cands)
	for _, c := range cands {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		claimed, failed, err := b.process(ctx, c)
		if err != nil {
			return st, err
		}
		switch {
		case claimed: // and published: a claim commits after its publish
			st.Claimed++
			st.Published++
		case failed:
			st.Failed++
		default:
			st.Lost++
		}
	}
	// Check in only once the poll made its progress: a bridge cut off from NATS, or one
	// whose claims fail, lets managementnode.lastcheckin age, as a dead vcld would.
	if err := b.checkIn(ctx); err != nil {
		return st, err
	}
	// Published ids are kept a day: far longer than JetStream's duplicate window.
	if _, err := b.db.ExecContext(ctx, "DELETE FROM vclq_outbox WHERE published < NOW() - INTERVAL 1 DAY LIMIT 1000"); err != nil {
		return st, fmt.Errorf("prune the outbox: %w", err)
	}
	return st, nil
}

func (b *Bridge) stateIDList(states ...string) string {
	ids := make([]string, len(states))
	for i, s := range states {
		ids[i] = strconv.Itoa(b.states.id[s])
	}
	return strings.Join(ids, ",")
}

// expire ends inuse reservations whose end has passed, as vcld's inuse.pm does:
// inuse/<last> → timeout/inuse, which the same poll then reclaims.
func (b *Bridge) expire(ctx context.Context) (int, error) {
	res, err := b.db.ExecContext(ctx, `UPDATE request r JOIN reservation rs ON rs.requestid = r.id
SET r.stateid = `+b.stateIDList(messages.StateTimeout)+`, r.laststateid = `+b.stateIDList(messages.StateInUse)+`
WHERE rs.managementnodeid IN (`+b.mnList+`) AND r.stateid = `+b.stateIDList(messages.StateInUse)+`
	AND r.end <= NOW() AND r.end > '1000-01-01'`)
	if err != nil {
		return 0, fmt.Errorf("expire ended reservations: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// due reads the rows to process (see Due for the rule).
func (b *Bridge) due(ctx context.Context) ([]candidate, error) {
	q := `SELECT r.id, rs.id, rs.computerid, r.stateid, r.laststateid, r.datemodified,
	UNIX_TIMESTAMP(r.datemodified), UNIX_TIMESTAMP(r.start), UNIX_TIMESTAMP(r.end), rs.remoteIP,
	(SELECT COUNT(*) FROM reservation x WHERE x.requestid = r.id)
FROM request r JOIN reservation rs ON rs.requestid = r.id
WHERE rs.managementnodeid IN (` + b.mnList + `)
	AND r.stateid IN (` + b.stateIDList(polledStates...) + `)
	AND (r.stateid <> ` + b.stateIDList(messages.StateReserved) + ` OR (rs.remoteIP IS NOT NULL AND rs.remoteIP <> ''))
	AND (r.stateid NOT IN (` + b.stateIDList(messages.StateNew, messages.StateReload) + `) OR r.start <= NOW() + INTERVAL ? SECOND)
ORDER BY r.start, r.id, rs.id
LIMIT ?`
	rows, err := b.db.QueryContext(ctx, q, int64(b.cfg.Preload/time.Second), b.cfg.PollLimit)
	if err != nil {
		return nil, fmt.Errorf("read due requests: %w", err)
	}
	defer rows.Close()
	var out []candidate
	for rows.Next() {
		var c candidate
		if err := rows.Scan(&c.requestID, &c.reservationID, &c.computerID, &c.stateID, &c.lastStateID, &c.modified,
			&c.modifiedUnix, &c.startUnix, &c.endUnix, &c.remoteIP, &c.reservations); err != nil {
			return nil, fmt.Errorf("read due requests: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read due requests: %w", err)
	}
	return out, nil
}

// process builds, claims and queues one row, or fails it. It returns an error only
// for a database failure (retried on the next poll).
func (b *Bridge) process(ctx context.Context, c candidate) (claimed, failed bool, err error) {
	state := b.states.name[c.stateID]
	kind, _ := KindForState(state)
	log := b.log.With().Int64("reservation", c.reservationID).Int64("request", c.requestID).Str("state", state).Logger()
	var req *messages.Request
	if c.reservations != 1 {
		err = fmt.Errorf("%w: request %d has %d reservations; cluster requests are not supported by the vclq bridge", errBadRow, c.requestID, c.reservations)
	} else {
		req, err = b.build(ctx, c, kind)
	}
	if errors.Is(err, errBadRow) {
		ok, ferr := b.failRow(ctx, c, err.Error())
		if ferr != nil {
			return false, false, ferr
		}
		if ok {
			log.Error().Str("reason", err.Error()).Msg("request failed: it cannot become a valid message")
		}
		return false, ok, nil
	}
	if err != nil {
		return false, false, err
	}
	if err := b.at(pointClaiming); err != nil {
		return false, false, err
	}
	ok, err := b.claim(ctx, c, req)
	if err != nil {
		return false, false, err
	}
	if !ok {
		log.Debug().Msg("request changed or was claimed by someone else first")
		return false, false, nil
	}
	log.Info().Str("kind", string(kind)).Str("computer", req.Computer.ShortName).Msg("request claimed")
	if err := b.at(pointClaimed); err != nil {
		return true, false, err
	}
	return true, false, nil
}

// casWhere is VCL's compare-and-set condition on a request row as it was read; the
// modification time makes the bridge's claim stricter than vcld's (a row the web UI
// changed since it was read is re-read on the next poll).
const casWhere = ` WHERE id = ? AND stateid = ? AND laststateid = ? AND datemodified <=> ?`

// claim moves the request X/<last> → pending/X and, in the same transaction, writes
// the begin loadlog row, publishes the message and records it in the outbox as
// published. The transaction commits only after JetStream acknowledged the message:
// a row is never pending while its message is not queued, so nothing is claimed while
// NATS is down, however late in the poll the connection went. A publish that fails
// rolls the claim back and fails the poll. A crash (or failed commit) after the
// publish leaves the row unclaimed with its message queued: the next poll claims it
// again with the same id (nothing that id's claim wrote was committed), and JetStream
// drops the duplicate.
func (b *Bridge) claim(ctx context.Context, c candidate, req *messages.Request) (bool, error) {
	payload, err := json.Marshal(req)
	if err != nil {
		return false, fmt.Errorf("reservation %d: encode request: %w", c.reservationID, err)
	}
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("reservation %d: claim: %w", c.reservationID, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	res, err := tx.ExecContext(ctx, "UPDATE request SET stateid = ?, laststateid = ?"+casWhere,
		b.states.id[messages.StatePending], c.stateID, c.requestID, c.stateID, c.lastStateID, c.modified)
	if err != nil {
		return false, fmt.Errorf("reservation %d: claim: %w", c.reservationID, err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return false, err
	}
	if b.states.name[c.lastStateID] == messages.StatePending {
		// The web UI changed a request whose job runs (say deleted/pending): that job
		// is over for VCL. Its exited row goes before this job's begin; its late rows
		// and result are not written (applyLoadlog, applyResult).
		if err := b.insertLoadlog(ctx, tx, c.reservationID, c.computerID, messages.LoadExited, 0,
			"vclq bridge: the running job ends: request "+b.states.name[c.stateID]+" by the web UI"); err != nil {
			return false, err
		}
	}
	if err := b.insertLoadlog(ctx, tx, c.reservationID, c.computerID, messages.LoadBegin, 0,
		"vclq bridge: queued on "+req.Kind.Subject()); err != nil {
		return false, err
	}
	id, err := b.claimMsgID(ctx, tx, c, req)
	if err != nil {
		return false, err
	}
	e := outboxEntry{id: id, subject: req.Kind.Subject(), payload: payload, request: c.requestID, reservation: c.reservationID}
	if err := b.publish(ctx, e); err != nil {
		return false, err
	}
	if err := b.at(pointPublished); err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO vclq_outbox (msg_id, subject, payload, request_id, reservation_id, created, published) VALUES (?, ?, ?, ?, ?, NOW(), NOW())",
		id, e.subject, payload, c.requestID, c.reservationID); err != nil {
		return false, fmt.Errorf("reservation %d: outbox: %w", c.reservationID, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("reservation %d: claim: %w", c.reservationID, err)
	}
	return true, nil
}

// claimMsgID is the message id of a claim. Request.MsgID() is kind, reservation and
// request.datemodified, and vcld's state changes leave datemodified alone: a
// reservation reinstalled twice would reuse the id of its first claim, and JetStream
// would drop the second message as a duplicate. An id an earlier claim used gets a
// suffix.
func (b *Bridge) claimMsgID(ctx context.Context, tx *sql.Tx, c candidate, req *messages.Request) (string, error) {
	id := req.MsgID()
	var used int
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM vclq_outbox WHERE msg_id = ? OR msg_id LIKE CONCAT(?, '-c%')", id, id).Scan(&used); err != nil {
		return "", fmt.Errorf("reservation %d: outbox: %w", c.reservationID, err)
	}
	if used > 0 {
		id = fmt.Sprintf("%s-c%d", id, used+1)
	}
	return id, nil
}

// failRow moves the request X/<last> → failed/X with the reason in a failed loadlog
// row. It reports false when the row changed first.
func (b *Bridge) failRow(ctx context.Context, c candidate, reason string) (bool, error) {
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("reservation %d: fail: %w", c.reservationID, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	res, err := tx.ExecContext(ctx, "UPDATE request SET stateid = ?, laststateid = ?"+casWhere,
		b.states.id[messages.StateFailed], c.stateID, c.requestID, c.stateID, c.lastStateID, c.modified)
	if err != nil {
		return false, fmt.Errorf("reservation %d: fail: %w", c.reservationID, err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return false, err
	}
	if err := b.insertLoadlog(ctx, tx, c.reservationID, c.computerID, messages.LoadFailed, 0, "vclq bridge: "+reason); err != nil {
		return false, err
	}
	return true, tx.Commit()
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// insertLoadlog writes a computerloadlog row; at is the event time (Unix seconds), 0
// for now. The row is written only if the computer exists (VCL's foreign key), and the
// text is made fit for VCL's latin1 column.
func (b *Bridge) insertLoadlog(ctx context.Context, tx execer, reservation, computer int64, name string, at int64, info string) error {
	id, ok := b.loadstates.id[name]
	if !ok {
		id = b.loadstates.id[messages.LoadInfo]
		info = name + ": " + info
	}
	ts := "NOW()"
	args := []any{reservation, computer, id}
	if at > 0 {
		ts = "FROM_UNIXTIME(?)"
		args = append(args, at)
	}
	args = append(args, latin1(info, 4000), computer)
	if _, err := tx.ExecContext(ctx, "INSERT INTO computerloadlog (reservationid, computerid, loadstateid, timestamp, additionalinfo) SELECT ?, ?, ?, "+ts+", ? FROM computer WHERE id = ?", args...); err != nil {
		return fmt.Errorf("reservation %d: loadlog %s: %w", reservation, name, err)
	}
	return nil
}

// latin1 makes s fit a latin1 column of at most max characters: other characters and
// control characters become '?' and ' '.
func latin1(s string, max int) string {
	s = messages.CleanText(s, 4*max)
	r := []rune(s)
	if len(r) > max {
		r = r[:max]
	}
	for i, c := range r {
		if c > 0xff {
			r[i] = '?'
		}
	}
	return string(r)
}

// outboxEntry is one message of the outbox.
type outboxEntry struct {
	seq                  int64
	id, subject          string
	payload              []byte
	request, reservation int64
}

// publish publishes e with its message id and waits for JetStream's acknowledgement.
func (b *Bridge) publish(ctx context.Context, e outboxEntry) error {
	kind, _ := messages.KindFromSubject(e.subject)
	m := &nats.Msg{Subject: e.subject, Data: e.payload, Header: nats.Header{}}
	m.Header.Set(messages.HeaderReservation, strconv.FormatInt(e.reservation, 10))
	m.Header.Set(messages.HeaderRequest, strconv.FormatInt(e.request, 10))
	m.Header.Set(messages.HeaderKind, string(kind))
	pctx, cancel := context.WithTimeout(ctx, b.cfg.PublishTimeout)
	defer cancel()
	if _, err := b.js.PublishMsg(pctx, m, jetstream.WithMsgID(e.id)); err != nil {
		return fmt.Errorf("reservation %d: publish %s: %w", e.reservation, e.subject, err)
	}
	return nil
}

// FlushOutbox publishes every unpublished outbox message, oldest first, and marks each
// published once JetStream acknowledged it. Claims publish their own message before
// they commit; entries are left unpublished only by a bridge that committed a claim
// and died before marking it (or by an older bridge). The Nats-Msg-Id makes a
// re-publish harmless.
func (b *Bridge) FlushOutbox(ctx context.Context) (int, error) {
	rows, err := b.db.QueryContext(ctx, "SELECT seq, msg_id, subject, payload, request_id, reservation_id FROM vclq_outbox WHERE published IS NULL ORDER BY seq LIMIT 1000")
	if err != nil {
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	var list []outboxEntry
	for rows.Next() {
		var e outboxEntry
		if err := rows.Scan(&e.seq, &e.id, &e.subject, &e.payload, &e.request, &e.reservation); err != nil {
			rows.Close()
			return 0, fmt.Errorf("read outbox: %w", err)
		}
		list = append(list, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	n := 0
	var done []int64
	for _, e := range list {
		if err := b.publish(ctx, e); err != nil {
			return n, err
		}
		done = append(done, e.seq)
		if len(done) == 100 {
			if err := b.unqueue(ctx, done); err != nil {
				return n, err
			}
			n, done = n+len(done), done[:0]
		}
	}
	if err := b.unqueue(ctx, done); err != nil {
		return n, err
	}
	return n + len(done), nil
}

// unqueue marks messages published (one statement, one commit); they stay a day as the
// history of used message ids.
func (b *Bridge) unqueue(ctx context.Context, seqs []int64) error {
	if len(seqs) == 0 {
		return nil
	}
	ids := make([]string, len(seqs))
	for i, s := range seqs {
		ids[i] = strconv.FormatInt(s, 10)
	}
	if _, err := b.db.ExecContext(ctx, "UPDATE vclq_outbox SET published = NOW() WHERE seq IN ("+strings.Join(ids, ",")+")"); err != nil {
		return fmt.Errorf("mark %d messages published: %w", len(seqs), err)
	}
	return nil
}
