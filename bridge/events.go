package bridge

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/metrics"
)

// ConsumerConfig is the bridge's durable pull consumer on VCL_EVENTS: every loadlog
// and result event, explicit acks, redelivered without limit (an event is only acked
// once it is in the database, so a long database outage must not exhaust deliveries).
// MaxAckPending is 1: one event is out at a time across all bridges sharing the
// consumer, so events reach the database in stream order (VCL's web progress view reads
// the computerloadlog rows of a reservation in order), also after a crash or a database
// failure (the unacknowledged event comes back first, after ackWait or the retry
// delay). ackWait <= 0 means 30s.
func ConsumerConfig(ackWait time.Duration) jetstream.ConsumerConfig {
	if ackWait <= 0 {
		ackWait = 30 * time.Second
	}
	return jetstream.ConsumerConfig{
		Durable:       messages.ConsumerBridge,
		Description:   "vclq bridge: loadlog and result events into the VCL database, in order",
		FilterSubject: messages.SubjectEventsAll,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: 1,
		MaxWaiting:    64,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
}

// EnsureConsumer creates or updates the bridge's consumer.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, ackWait time.Duration) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, messages.StreamEvents, ConsumerConfig(ackWait))
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s on %s: %w", messages.ConsumerBridge, messages.StreamEvents, err)
	}
	return c, nil
}

func (b *Bridge) eventLoop(ctx context.Context) error {
	bo := backoff{min: 500 * time.Millisecond, max: b.cfg.MaxBackoff}
	var cons jetstream.Consumer
	for ctx.Err() == nil {
		if cons == nil {
			c, err := EnsureConsumer(ctx, b.js, b.cfg.EventAckWait)
			if err != nil {
				d := bo.next()
				b.log.Warn().Err(err).Dur("retry_in", d).Msg("bridge event consumer unavailable")
				_ = wait.Sleep(ctx, d)
				continue
			}
			cons = c
		}
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(b.cfg.FetchWait))
		if err != nil {
			cons = nil
			d := bo.next()
			b.log.Warn().Err(err).Dur("retry_in", d).Msg("bridge event fetch failed")
			_ = wait.Sleep(ctx, d)
			continue
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil && len(msgs) == 0 {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				cons = nil
			}
			d := bo.next()
			b.log.Warn().Err(err).Dur("retry_in", d).Msg("bridge event fetch failed")
			_ = wait.Sleep(ctx, d)
			continue
		}
		if len(msgs) == 0 {
			continue
		}
		err = b.applyBatch(ctx, msgs)
		switch {
		case errors.As(err, new(errCrash)):
			return err
		case err != nil && ctx.Err() != nil:
			return nil
		case fatal(err) != nil:
			for _, m := range msgs {
				_ = m.Nak() // for a bridge that can apply it
			}
			return fmt.Errorf("apply events: %w", fatal(err))
		case err != nil:
			b.noteError(err)
			d := bo.next()
			b.log.Warn().Err(err).Int("events", len(msgs)).Dur("retry_in", d).Msg("bridge could not apply events; they will be redelivered")
			for _, m := range msgs {
				_ = m.NakWithDelay(d)
			}
			_ = wait.Sleep(ctx, d)
		default:
			bo.reset()
		}
	}
	return nil
}

// event is one fetched event, decoded.
type event struct {
	msg     jetstream.Msg
	seq     uint64 // the event's stream sequence: the original one for a replayed event
	msgSeq  uint64 // this message's stream sequence
	numDel  uint64 // deliveries of this message
	replay  bool   // re-published by `vclq dlq replay`
	loadlog *messages.Loadlog
	result  *messages.Result
	bad     error // can never apply: parked
	after   func()
}

// reservation is the event's reservation id: from its payload, else its subject.
func (e *event) reservation() int64 {
	switch {
	case e.loadlog != nil:
		return e.loadlog.ReservationID
	case e.result != nil:
		return e.result.ReservationID
	}
	subj := e.msg.Subject()
	id, _ := strconv.ParseInt(subj[strings.LastIndexByte(subj, '.')+1:], 10, 64)
	return max(id, 0)
}

func (e *event) kind() messages.Kind {
	switch {
	case e.loadlog != nil:
		return e.loadlog.Kind
	case e.result != nil:
		return e.result.Kind
	}
	return ""
}

// id is the event's id (its Nats-Msg-Id), or seq-<stream seq> when it does not decode.
func (e *event) id() string {
	switch {
	case e.loadlog != nil:
		return e.loadlog.MsgID()
	case e.result != nil:
		return e.result.MsgID()
	}
	return "seq-" + strconv.FormatUint(e.seq, 10)
}

func (e *event) deliveries() uint64 { return max(e.numDel, 1) }

func decodeEvent(m jetstream.Msg) *event {
	e := &event{msg: m}
	if meta, err := m.Metadata(); err == nil {
		e.seq, e.msgSeq, e.numDel = meta.Sequence.Stream, meta.Sequence.Stream, meta.NumDelivered
	}
	// A parked event replayed by `vclq dlq replay` keeps its place: its original
	// sequence (for the order of its reservation's events and lateLoadlog).
	if orig, err := strconv.ParseUint(m.Headers().Get(messages.HeaderOrigSequence), 10, 64); err == nil && orig > 0 {
		e.seq, e.replay = orig, true
	}
	subj := m.Subject()
	switch {
	case strings.HasPrefix(subj, messages.SubjectLoadlogPrefix):
		e.loadlog, e.bad = decodeLoadlog(m.Data())
	case strings.HasPrefix(subj, messages.SubjectResultPrefix):
		e.result, e.bad = messages.DecodeResult(m.Data())
	default:
		e.bad = fmt.Errorf("%w: subject %s is not an event subject", messages.ErrInvalid, subj)
	}
	return e
}

// applyBatch applies fetched events (one, with MaxAckPending 1) in stream order, each
// in its own transaction with its id in vclq_applied, and acks each once committed.
// An event that cannot be applied is handled by how it failed (eventErrClass): a
// database or connection outage is returned (the caller hands the event back for
// redelivery, without limit); an event whose data the database refuses, that does
// not decode, or that follows a parked event of its reservation is parked at once
// (park); any other failure is retried with backoff until the event was delivered
// maxEventDeliveries times, then parked. A permission or schema error is returned
// (fatal): the bridge stops.
func (b *Bridge) applyBatch(ctx context.Context, msgs []jetstream.Msg) error {
	for _, m := range msgs {
		e := decodeEvent(m)
		err := b.applyEvent(ctx, e)
		if err == nil {
			if err := b.at(pointApplied); err != nil {
				return err
			}
			b.observeApplied(e)
			if e.after != nil {
				e.after()
			}
			b.ack(ctx, e)
			continue
		}
		if errors.As(err, new(errCrash)) || fatal(err) != nil || ctx.Err() != nil {
			return err
		}
		c := classifyEventErr(err)
		b.observeEventErr(err, c)
		switch {
		case c == retryOutage:
			return err
		case c == retryBounded && e.deliveries() < maxEventDeliveries:
			return fmt.Errorf("event %s (stream seq %d), delivery %d of %d: %w", e.msg.Subject(), e.seq, e.deliveries(), maxEventDeliveries, err)
		}
		if err := b.park(ctx, e, err); err != nil {
			return err
		}
	}
	return nil
}

// maxEventDeliveries bounds the attempts at an event that fails for a reason that is
// neither an outage nor refused data (a lock wait timeout, say) before it is parked.
const maxEventDeliveries = 5

// eventErrClass is how an event's failure is handled.
type eventErrClass int

const (
	retryOutage  eventErrClass = iota // the database is unreachable: retried without limit
	retryBounded                      // retried maxEventDeliveries times, then parked
	parkNow                           // can never apply: parked at once
)

// errBehindParked is returned for an event of a reservation with an earlier event
// parked: it is parked too, so the reservation's events stay in order.
var errBehindParked = errors.New("an earlier event of the reservation is parked")

// errBadEvent wraps why an event does not decode: it is parked at once.
var errBadEvent = errors.New("event does not decode")

// observeEventErr counts a failed event's database error by class.
func (b *Bridge) observeEventErr(err error, c eventErrClass) {
	switch {
	case c == retryOutage:
		b.metrics().DatabaseError(metrics.DBTransient)
	case permanentDBError(err) || fatal(err) != nil:
		b.metrics().DatabaseError(metrics.DBPermanent)
	}
}

func classifyEventErr(err error) eventErrClass {
	var me *mysql.MySQLError
	switch {
	case errors.Is(err, errBehindParked), errors.Is(err, errBadEvent), permanentDBError(err):
		return parkNow
	case errors.As(err, &me):
		if slices.Contains(outageErrors, me.Number) {
			return retryOutage
		}
		if me.Number == 1644 { // a trigger's SIGNAL: the site refuses this change
			return parkNow
		}
		return retryBounded
	case errors.Is(err, driver.ErrBadConn), errors.Is(err, mysql.ErrInvalidConn), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, sql.ErrConnDone), errors.As(err, new(net.Error)):
		return retryOutage
	}
	return retryBounded
}

// applyEvent applies one event in a transaction: parked if it follows a parked event
// of its reservation, skipped if applied before, else the loadlog row or state_exit.
// A replayed event (dlq replay) that applies removes its parking marker.
func (b *Bridge) applyEvent(ctx context.Context, e *event) error {
	if e.bad != nil {
		return fmt.Errorf("%w: %w", errBadEvent, e.bad)
	}
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("apply event %s: %w", e.msg.Subject(), err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	res := e.reservation()
	var parked sql.NullInt64
	if err := tx.QueryRowContext(ctx, "SELECT MIN(stream_seq) FROM vclq_applied WHERE reservation_id = ? AND event_id LIKE 'parked-%' AND stream_seq < ?",
		res, e.seq).Scan(&parked); err != nil {
		return fmt.Errorf("reservation %d: parked events: %w", res, err)
	}
	if parked.Valid {
		return fmt.Errorf("reservation %d: %w (stream seq %d)", res, errBehindParked, parked.Int64)
	}
	if e.loadlog != nil {
		err = b.applyLoadlog(ctx, tx, e)
	} else {
		err = b.applyResult(ctx, tx, e)
	}
	if err != nil {
		return err
	}
	if e.replay {
		if _, err := tx.ExecContext(ctx, "DELETE FROM vclq_applied WHERE event_id = ?", "parked-"+e.id()); err != nil {
			return fmt.Errorf("reservation %d: unpark event: %w", res, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("apply event %s: commit: %w", e.msg.Subject(), err)
	}
	return nil
}

// ack acks an applied or parked event, confirmed: the server has freed the consumer's
// one pending slot before the next fetch asks for it.
func (b *Bridge) ack(ctx context.Context, e *event) {
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := e.msg.DoubleAck(actx); err != nil {
		// Applied already: a redelivery finds it in vclq_applied.
		b.log.Debug().Err(err).Uint64("stream_seq", e.seq).Msg("ack failed")
	}
}

// park keeps an event that cannot be applied as a dead letter in VCL_DEADLETTERS
// (vcl.dlq.<kind>.<reservation>, with the reason; `vclq dlq replay` re-publishes it
// to its event subject), marks it parked in vclq_applied (parked-<event id>: later
// events of the reservation are parked behind it, so its events stay in order), writes
// a WARNING loadlog row for the web UI (for the first parked event of a reservation),
// and acks it: other reservations go on.
func (b *Bridge) park(ctx context.Context, e *event, why error) error {
	b.metrics().Terminated(eventType(e))
	res := e.reservation()
	if !e.replay && res > 0 {
		// Parked before (the stream is replayed into a new consumer): already a dead
		// letter, or replayed from there.
		var n int
		if err := b.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM vclq_applied WHERE event_id = ?", "parked-"+e.id()).Scan(&n); err != nil {
			return fmt.Errorf("reservation %d: park event: %w", res, err)
		}
		if n > 0 {
			b.ack(ctx, e)
			return nil
		}
	}
	reason := messages.CleanText(why.Error(), 900)
	kind := e.kind()
	m := nats.NewMsg(messages.DeadLetterSubject(kind, res))
	m.Data = e.msg.Data()
	m.Header.Set(messages.HeaderReason, reason)
	m.Header.Set(messages.HeaderOrigSubject, e.msg.Subject())
	m.Header.Set(messages.HeaderOrigSequence, strconv.FormatUint(e.seq, 10))
	m.Header.Set(messages.HeaderDeliveries, strconv.FormatUint(e.deliveries(), 10))
	m.Header.Set(messages.HeaderDeadLetterAt, time.Now().UTC().Format(time.RFC3339Nano))
	m.Header.Set(messages.HeaderWorker, "vclq-bridge")
	if res > 0 {
		m.Header.Set(messages.HeaderReservation, strconv.FormatInt(res, 10))
	}
	if kind.Valid() {
		m.Header.Set(messages.HeaderKind, string(kind))
	}
	pctx, cancel := context.WithTimeout(ctx, b.cfg.PublishTimeout)
	defer cancel()
	// The id of this delivery's message (a replayed event parked again is a new message).
	if _, err := b.js.PublishMsg(pctx, m, jetstream.WithMsgID(fmt.Sprintf("dlq-event-%d", e.msgSeq))); err != nil {
		return fmt.Errorf("reservation %d: park event %s: %w", res, e.msg.Subject(), err)
	}
	if res > 0 {
		if err := b.markParked(ctx, e, res, why, reason); err != nil {
			return err
		}
	}
	b.log.Error().Err(why).Int64("reservation", res).Str("subject", e.msg.Subject()).Uint64("stream_seq", e.seq).
		Msg("event cannot be applied: parked as a dead letter (vclq dlq list / replay)")
	b.ack(ctx, e)
	return nil
}

func (b *Bridge) markParked(ctx context.Context, e *event, res int64, why error, reason string) error {
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("reservation %d: park event: %w", res, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if _, err := tx.ExecContext(ctx, "INSERT IGNORE INTO vclq_applied (event_id, stream_seq, reservation_id, applied) VALUES (?, ?, ?, NOW())",
		"parked-"+e.id(), e.seq, res); err != nil {
		return fmt.Errorf("reservation %d: park event: %w", res, err)
	}
	if !errors.Is(why, errBehindParked) {
		var computer int64
		err := tx.QueryRowContext(ctx, "SELECT computerid FROM reservation WHERE id = ?", res).Scan(&computer)
		if err == nil {
			if _, err = tx.ExecContext(ctx, "SAVEPOINT vclq_warning"); err == nil {
				err = b.insertLoadlog(ctx, tx, res, computer, messages.LoadWarning, 0,
					fmt.Sprintf("vclq bridge: event %s (stream seq %d) not applied, parked as a dead letter: %s", e.msg.Subject(), e.seq, reason))
			}
		}
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			if fatal(err) != nil || classifyEventErr(err) == retryOutage {
				return fmt.Errorf("reservation %d: park event: %w", res, err)
			}
			// The site refuses the warning row too (the same cause): the dead letter
			// and the log say it.
			_, _ = tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT vclq_warning")
			b.log.Warn().Err(err).Int64("reservation", res).Msg("WARNING loadlog row of a parked event not written")
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("reservation %d: park event: commit: %w", res, err)
	}
	return nil
}

// permanentDBError reports database errors a retry cannot fix (bad data, a foreign key
// the site's schema enforces).
func permanentDBError(err error) bool {
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		return false
	}
	switch me.Number {
	case 1048, 1062, 1264, 1265, 1292, 1366, 1406, 1451, 1452:
		return true
	}
	return false
}

// decodeLoadlog decodes strictly; an event whose only fault is a loadstate name
// vclq does not know is kept as an info event with the name in its text.
func decodeLoadlog(data []byte) (*messages.Loadlog, error) {
	l, err := messages.DecodeLoadlog(data)
	if err == nil {
		return l, nil
	}
	var loose messages.Loadlog
	if json.Unmarshal(data, &loose) != nil || messages.ValidLoadstateName(loose.Name) || loose.Name == "" {
		return nil, err
	}
	loose.Info = messages.CleanText(messages.CleanText(loose.Name, 64)+": "+loose.Info, messages.MaxInfoLen)
	loose.Name = messages.LoadInfo
	if loose.Validate() != nil {
		return nil, err
	}
	return &loose, nil
}

// record inserts the event id into vclq_applied; false when it was applied before.
func record(ctx context.Context, tx *sql.Tx, id string, seq uint64, reservation int64) (bool, error) {
	res, err := tx.ExecContext(ctx, "INSERT IGNORE INTO vclq_applied (event_id, stream_seq, reservation_id, applied) VALUES (?, ?, ?, NOW())", id, seq, reservation)
	if err != nil {
		return false, fmt.Errorf("record event %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// lateLoadlog reports whether l, stored at stream sequence seq, is late
// (messages.IsLate): a result of its reservation for the same or a newer request was
// applied before it. The applied results are in vclq_applied (result-<res>-<seq>),
// so this holds across bridge restarts.
func lateLoadlog(ctx context.Context, tx *sql.Tx, l *messages.Loadlog, seq uint64) (bool, error) {
	rows, err := tx.QueryContext(ctx, "SELECT event_id FROM vclq_applied WHERE reservation_id = ? AND stream_seq < ? AND event_id LIKE 'result-%'", l.ReservationID, seq)
	if err != nil {
		return false, fmt.Errorf("reservation %d: results applied before a loadlog event: %w", l.ReservationID, err)
	}
	defer rows.Close()
	prefix := fmt.Sprintf("result-%d-", l.ReservationID)
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return false, err
		}
		rs, err := strconv.ParseUint(strings.TrimPrefix(id, prefix), 10, 64)
		if err == nil && strings.HasPrefix(id, prefix) && messages.IsLate(l, rs) {
			return true, nil
		}
	}
	return false, rows.Err()
}

// applyLoadlog writes a computerloadlog row for a begin or info event (end and fail
// events write none: VCL writes a row when a step starts; a failure reaches the
// database with the result).
func (b *Bridge) applyLoadlog(ctx context.Context, tx *sql.Tx, e *event) error {
	l := e.loadlog
	if l.Phase != messages.PhaseBegin && l.Phase != messages.PhaseInfo {
		return nil
	}
	if fresh, err := record(ctx, tx, l.MsgID(), e.seq, l.ReservationID); err != nil || !fresh {
		return err
	}
	if late, err := lateLoadlog(ctx, tx, l, e.seq); err != nil || late {
		if late {
			b.log.Info().Int64("reservation", l.ReservationID).Uint64("request_seq", l.RequestSeq).Str("step", l.Name).Str("worker", l.Worker).
				Msg("late loadlog event of a fenced-out job (after the request's result): recorded, not written")
		}
		return err
	}
	if l.Name == messages.LoadFailed {
		// The failure's one failed row is the result's, with its error code.
		return nil
	}
	var computer int64
	var stateID, lastID int
	// Shared lock: a claim that published this job's request and has not committed yet
	// is waited for.
	err := tx.QueryRowContext(ctx, `SELECT rs.computerid, r.stateid, r.laststateid FROM reservation rs JOIN request r ON r.id = rs.requestid
WHERE rs.id = ? LOCK IN SHARE MODE`, l.ReservationID).Scan(&computer, &stateID, &lastID)
	if errors.Is(err, sql.ErrNoRows) {
		b.log.Warn().Int64("reservation", l.ReservationID).Str("step", l.Name).Msg("loadlog event for a reservation that no longer exists: recorded, not written")
		return nil
	}
	if err != nil {
		return fmt.Errorf("reservation %d: loadlog: %w", l.ReservationID, err)
	}
	if l.Kind.Valid() && (b.states.name[stateID] != messages.StatePending || !slices.Contains(kindStates[l.Kind], b.states.name[lastID])) {
		// The job is no longer the request's (the web UI deleted it meanwhile: its
		// exited row was written before the next job's begin).
		b.log.Info().Int64("reservation", l.ReservationID).Str("kind", string(l.Kind)).Str("step", l.Name).
			Str("request_state", b.states.name[stateID]+"/"+b.states.name[lastID]).
			Msg("loadlog event of a job the request no longer runs: recorded, not written")
		return nil
	}
	return b.insertLoadlog(ctx, tx, l.ReservationID, computer, l.Name, l.Time.Unix(), l.Info)
}

// applyResult applies VCL's state_exit for a result: the request pending/X → <next>/X,
// the computer's state (and current image after a load), image size and revision after
// a capture, reservation passwords, a failed row with the error, the exited row, and a
// reload request when the computer goes to reload.
func (b *Bridge) applyResult(ctx context.Context, tx *sql.Tx, e *event) error {
	r := e.result
	log := b.log.With().Int64("reservation", r.ReservationID).Str("kind", string(r.Kind)).Str("outcome", string(r.Outcome)).Logger()
	if fresh, err := record(ctx, tx, r.MsgID(), e.seq, r.ReservationID); err != nil || !fresh {
		return err
	}
	if r.ReservationID == 0 {
		log.Error().Str("error", r.Error).Msg("rejected request without a reservation id: nothing to apply")
		return nil
	}
	var (
		requestID, computerID, imageID, revID, mn, userID int64
		stateID, lastID                                   int
	)
	err := tx.QueryRowContext(ctx, `SELECT rs.requestid, rs.computerid, rs.imageid, rs.imagerevisionid, rs.managementnodeid, r.userid, r.stateid, r.laststateid
FROM reservation rs JOIN request r ON r.id = rs.requestid WHERE rs.id = ? FOR UPDATE`, r.ReservationID).
		Scan(&requestID, &computerID, &imageID, &revID, &mn, &userID, &stateID, &lastID)
	if errors.Is(err, sql.ErrNoRows) {
		log.Warn().Msg("result for a reservation that no longer exists: recorded, not applied")
		return nil
	}
	if err != nil {
		return fmt.Errorf("reservation %d: result: %w", r.ReservationID, err)
	}
	kind := r.Kind
	if kind == "" {
		kind, _ = KindForState(b.states.name[lastID])
	}
	if b.states.name[stateID] != messages.StatePending || !slices.Contains(kindStates[kind], b.states.name[lastID]) {
		log.Warn().Str("request_state", b.states.name[stateID]+"/"+b.states.name[lastID]).
			Msg("stale result: the request is no longer pending for this kind; recorded, not applied")
		return nil
	}

	reqState := r.RequestState
	if reqState == "" || r.Outcome == messages.OutcomeRejected && reqState == messages.StatePending {
		reqState = messages.StateFailed
	}
	reqStateID, ok := b.states.id[reqState]
	if !ok || reqState == messages.StatePending {
		reqState, reqStateID = messages.StateFailed, b.states.id[messages.StateFailed]
	}
	if _, err := tx.ExecContext(ctx, "UPDATE request SET stateid = ? WHERE id = ? AND stateid = ?",
		reqStateID, requestID, b.states.id[messages.StatePending]); err != nil {
		return fmt.Errorf("reservation %d: request state: %w", r.ReservationID, err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE reservation SET lastcheck = NOW() WHERE id = ?", r.ReservationID); err != nil {
		return fmt.Errorf("reservation %d: lastcheck: %w", r.ReservationID, err)
	}
	success := r.Outcome == messages.OutcomeSuccess
	if cs, ok := b.states.id[r.ComputerState]; ok && r.ComputerState != messages.StatePending {
		q, args := "UPDATE computer SET stateid = ?", []any{cs}
		// A reclaim reloads the slot in place when it cannot sanitise it (possibly with
		// the computer's next image): it reports what the slot carries, as loads do.
		if success && (kind == messages.KindNew || kind == messages.KindReload || kind == messages.KindReclaim) && r.ImageID > 0 && r.ImageRevisionID > 0 {
			q += ", currentimageid = ?, imagerevisionid = ?"
			args = append(args, r.ImageID, r.ImageRevisionID)
		}
		if _, err := tx.ExecContext(ctx, q+" WHERE id = ?", append(args, computerID)...); err != nil {
			return fmt.Errorf("reservation %d: computer %d state: %w", r.ReservationID, computerID, err)
		}
	} else if r.ComputerState != "" {
		log.Warn().Str("computer_state", r.ComputerState).Msg("computer state unknown to this site: computer unchanged")
	}
	if success && kind == messages.KindImage {
		if err := b.applyCapture(ctx, tx, r, imageID, revID, userID); err != nil {
			return err
		}
	}
	if err := b.applyPasswords(ctx, tx, r, computerID, userID); err != nil {
		return err
	}
	if !success {
		msg := r.Error
		if r.ErrorCode != "" {
			msg = r.ErrorCode + ": " + msg
		}
		if err := b.insertLoadlog(ctx, tx, r.ReservationID, computerID, messages.LoadFailed, r.Time.Unix(), msg); err != nil {
			return err
		}
	}
	if success && r.ComputerState == messages.StateReload {
		if err := b.insertReload(ctx, tx, computerID, imageID, revID, mn); err != nil {
			return err
		}
	}
	info := fmt.Sprintf("vclq %s %s on %s: request %s, computer %s", r.Kind, r.Outcome, r.Worker, reqState, r.ComputerState)
	if err := b.insertLoadlog(ctx, tx, r.ReservationID, computerID, messages.LoadExited, r.Time.Unix(), info); err != nil {
		return err
	}
	e.after = func() {
		log.Info().Str("request_state", reqState).Str("computer_state", r.ComputerState).Msg("result applied")
	}
	return nil
}

// applyCapture makes the captured image and its revision visible as image.pm does on
// success, in one UPDATE of both rows (the web's capture form created them with
// deleted=1): image.lastupdate, image.deleted=0, image.size (MB; VCL's column is a
// smallint, so it is capped at 65535; left alone when the worker measured none),
// image.name (the revision's imagename), imagerevision.deleted=0 and
// imagerevision.datecreated. Production is left to the web UI. A new revision the web
// did not create is inserted first.
func (b *Bridge) applyCapture(ctx context.Context, tx *sql.Tx, r *messages.Result, imageID, revID, userID int64) error {
	target, targetRev := imageID, revID
	if r.NewImage != nil {
		target, targetRev = r.NewImage.ImageID, r.NewImage.RevisionID
		if _, err := tx.ExecContext(ctx, `INSERT INTO imagerevision (id, imageid, revision, userid, datecreated, deleted, production, imagename)
SELECT ?, ?, ?, ?, NOW(), 0, IF(EXISTS(SELECT 1 FROM imagerevision x WHERE x.imageid = ? AND x.production = 1), 0, 1), ? FROM DUAL
WHERE NOT EXISTS (SELECT 1 FROM imagerevision y WHERE y.id = ? OR (y.imageid = ? AND y.revision = ?))`,
			r.NewImage.RevisionID, r.NewImage.ImageID, r.NewImage.Revision, userID, r.NewImage.ImageID, r.NewImage.Name,
			r.NewImage.RevisionID, r.NewImage.ImageID, r.NewImage.Revision); err != nil {
			return fmt.Errorf("reservation %d: image revision %d: %w", r.ReservationID, r.NewImage.RevisionID, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE image i JOIN imagerevision ir ON ir.imageid = i.id
SET i.lastupdate = NOW(), i.deleted = 0, i.size = IF(? > 0, LEAST(?, 65535), i.size), i.name = ir.imagename,
	ir.deleted = 0, ir.datecreated = NOW()
WHERE i.id = ? AND ir.id = ?`, r.ImageSizeMB, r.ImageSizeMB, target, targetRev); err != nil {
		return fmt.Errorf("reservation %d: image %d revision %d: %w", r.ReservationID, target, targetRev, err)
	}
	return nil
}

// applyPasswords opens each sealed password with the bridge's key and stores it:
// reservation.pw for the request's user, reservationaccounts.password for the others.
// A password that cannot be stored leaves a WARNING loadlog row; none is ever logged.
func (b *Bridge) applyPasswords(ctx context.Context, tx *sql.Tx, r *messages.Result, computerID, userID int64) error {
	for _, p := range r.Passwords {
		warn := func(why string) error {
			b.log.Warn().Int64("reservation", r.ReservationID).Str("user", p.Login).Msg("password not stored: " + why)
			return b.insertLoadlog(ctx, tx, r.ReservationID, computerID, messages.LoadWarning, r.Time.Unix(),
				fmt.Sprintf("vclq bridge: password of %s not stored: %s", p.Login, why))
		}
		if b.cfg.SealKey == nil {
			if err := warn("the bridge has no seal key (--seal-key)"); err != nil {
				return err
			}
			continue
		}
		pw, err := b.cfg.SealKey.Open(p.Sealed)
		if err != nil {
			if err := warn("it does not open with the bridge's seal key"); err != nil {
				return err
			}
			continue
		}
		if !printableASCII(pw) || len(pw) == 0 || len(pw) > 40 {
			clear(pw)
			if err := warn("it is not 1-40 printable ASCII characters"); err != nil {
				return err
			}
			continue
		}
		var q string
		var args []any
		if p.UserID == userID {
			q, args = "UPDATE reservation SET pw = ? WHERE id = ?", []any{string(pw), r.ReservationID}
		} else {
			q, args = "INSERT INTO reservationaccounts (reservationid, userid, password) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE password = VALUES(password)",
				[]any{r.ReservationID, p.UserID, string(pw)}
		}
		clear(pw)
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("reservation %d: store password of user %d: %w", r.ReservationID, p.UserID, err)
		}
	}
	return nil
}

func printableASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// insertReload queues VCL's reload request for a computer that a reclaim or a capture
// left in state reload (reclaim.pm's insert_reload_request): the computer's next image
// when one is set, else the reservation's image, by the vclreload user.
func (b *Bridge) insertReload(ctx context.Context, tx *sql.Tx, computerID, imageID, revID, mn int64) error {
	var next int64
	if err := tx.QueryRowContext(ctx, "SELECT nextimageid FROM computer WHERE id = ?", computerID).Scan(&next); err != nil {
		return fmt.Errorf("computer %d: next image: %w", computerID, err)
	}
	if next > 0 && next != imageID {
		var rev int64
		err := tx.QueryRowContext(ctx, `SELECT ir.id FROM imagerevision ir JOIN image i ON i.id = ir.imageid
WHERE ir.imageid = ? AND ir.production = 1 AND ir.deleted = 0 AND i.name <> 'noimage' ORDER BY ir.revision DESC LIMIT 1`, next).Scan(&rev)
		if err == nil {
			imageID, revID = next, rev
		} else if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("computer %d: next image: %w", computerID, err)
		}
	}
	reload := b.states.id[messages.StateReload]
	res, err := tx.ExecContext(ctx, `INSERT INTO request (stateid, userid, laststateid, start, end, daterequested, datemodified)
SELECT ?, COALESCE((SELECT id FROM user WHERE unityid = 'vclreload' ORDER BY id LIMIT 1), 1), ?, NOW(), NOW() + INTERVAL 1 HOUR, NOW(), NOW()`, reload, reload)
	if err != nil {
		return fmt.Errorf("computer %d: insert reload request: %w", computerID, err)
	}
	reqID, err := res.LastInsertId()
	if err != nil {
		return fmt.Errorf("computer %d: insert reload request: %w", computerID, err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO reservation (requestid, computerid, imageid, imagerevisionid, managementnodeid) VALUES (?, ?, ?, ?, ?)",
		reqID, computerID, imageID, revID, mn); err != nil {
		return fmt.Errorf("computer %d: insert reload reservation: %w", computerID, err)
	}
	return nil
}
