package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/metrics"
)

// Per-slot ordering.
//
// A lease's revision fences the job that holds *that* lease; it cannot stop a stale
// delivery (a paused node that wakes up, a redelivery after a lost ack) from taking a
// *new* lease later and repeating work the slot has long moved past. So each slot also
// has a record of the newest request it started, served.<computer> in vclq_slots (no
// TTL), changed only with compare-and-set. A job that holds the lease admits itself
// only when its request is not older than that record and has no result yet;
// otherwise it touches nothing (see admit).
//
// The record also lists the jobs waiting for the busy slot, each entry lapsing a lease
// TTL after its last renewal (so a crashed or paused waiter drops out by itself). A
// waiter tries to claim only when no live older waiter is listed, and a job that got
// the lease while an older one waits yields it: requests that wait together are
// served in stream order.

// SlotRecord is the value of served.<computer>.
type SlotRecord struct {
	// The newest request the slot started.
	Seq         uint64        `json:"seq"`
	Reservation int64         `json:"reservation"`
	Request     int64         `json:"request"`
	Kind        messages.Kind `json:"kind"`
	Worker      string        `json:"worker"`
	Delivery    int           `json:"delivery"`
	At          time.Time     `json:"at"`
	// Waiting lists the jobs waiting for the slot (at most maxSlotWaiters).
	Waiting []SlotWaiter `json:"waiting,omitempty"`
}

// SlotWaiter is a job waiting for a busy slot.
type SlotWaiter struct {
	Seq    uint64    `json:"seq"`
	Worker string    `json:"worker"`
	Until  time.Time `json:"until"` // lapses then unless renewed
}

// maxSlotWaiters bounds SlotRecord.Waiting; a job that finds it full waits unlisted
// (it may then be overtaken, and ends superseded rather than out of order).
const maxSlotWaiters = 64

// olderWaiting reports whether a live waiter older than seq is listed.
func (r *SlotRecord) olderWaiting(seq uint64, now time.Time) bool {
	for _, w := range r.Waiting {
		if w.Seq < seq && now.Before(w.Until) {
			return true
		}
	}
	return false
}

// withWaiter returns the waiting list with w set (or, when w.Until is zero, removed)
// and lapsed entries dropped.
func (r *SlotRecord) withWaiter(w SlotWaiter, now time.Time) []SlotWaiter {
	out := make([]SlotWaiter, 0, len(r.Waiting)+1)
	for _, e := range r.Waiting {
		if e.Seq != w.Seq && now.Before(e.Until) {
			out = append(out, e)
		}
	}
	if !w.Until.IsZero() && len(out) < maxSlotWaiters {
		out = append(out, w)
	}
	return out
}

// SlotServedKey is the key of a slot's SlotRecord: "served.<id>".
func SlotServedKey(computerID int64) string {
	return "served." + strconv.FormatInt(computerID, 10)
}

// verdict is what admit decided for a job that holds its slot's lease.
type verdict int

const (
	admitRun        verdict = iota // the request is the slot's newest work: run it
	admitDone                      // the request already has a result: touch nothing
	admitSuperseded                // a newer request was served first: fail it, touch nothing
	admitYield                     // an older request waits for the slot: let it go first
)

// ErrSuperseded is the cause of a request that never ran because the slot served a
// newer request first.
var ErrSuperseded = errors.New("a newer request for the same slot was served first")

// CodeSuperseded is the error code of its failed result.
const CodeSuperseded = "superseded"

// admission is admit's decision with what it read.
type admission struct {
	verdict verdict
	served  SlotRecord // the record found (zero when none)
	result  *messages.Result
}

// maxRecordWrites bounds the compare-and-set attempts of one record change (waiters
// write the record too).
const maxRecordWrites = 20

// admit decides, while the job holds the slot's lease, whether it may run: it reads the
// slot's record from the stream leader (a follower's copy may lag), checks for an
// existing result of this request on a redelivery, and records the job as the slot's
// newest work with compare-and-set. Only waiters change the record concurrently; a
// change of the newest request means our lease was superseded (ErrLeaseLost).
func (p *Pool) admit(ctx context.Context, j *job) (admission, error) {
	key := SlotServedKey(j.req.Computer.ID)
	if ok, err := p.admitFromCache(ctx, j, key); ok || err != nil {
		if ok {
			j.queued = false
		}
		return admission{}, err
	}
	rec, rev, err := p.readSlotRecord(ctx, key)
	if err != nil {
		return admission{}, fmt.Errorf("read %s: %w", key, err)
	}
	first := rec.Seq
	a := admission{served: rec}
	if rec.Seq > j.seq || j.delivery > 1 {
		// A redelivery may already have a result (lost ack, paused node); a request
		// older than the slot's newest may have finished before it was overtaken.
		if a.result, err = p.resultOf(ctx, j.req.Reservation.ID, j.seq); err != nil {
			return admission{}, fmt.Errorf("look up the result of request seq %d: %w", j.seq, err)
		}
	}
	for range maxRecordWrites {
		now := time.Now().UTC()
		a.served = rec
		switch {
		case rec.Seq != first:
			return admission{}, fmt.Errorf("%w: %s changed while this job held the lease", ErrLeaseLost, key)
		case a.result != nil:
			a.verdict = admitDone
			return a, nil
		case rec.Seq > j.seq:
			a.verdict = admitSuperseded
			return a, nil
		case rec.olderWaiting(j.seq, now):
			a.verdict = admitYield
			return a, nil
		}
		ok, err := p.writeSlotRecord(ctx, key, p.newestRecord(j, rec, now), rev)
		if err != nil {
			return admission{}, err
		}
		if ok {
			j.queued = false
			return a, nil
		}
		if rec, rev, err = p.readSlotRecord(ctx, key); err != nil {
			return admission{}, fmt.Errorf("read %s: %w", key, err)
		}
	}
	return admission{}, fmt.Errorf("write %s: still contended after %d attempts", key, maxRecordWrites)
}

// queueForSlot lists the job as waiting for its slot (renewed every LeaseTTL/3; in
// between the record is only read) and reports whether an older waiter is listed.
func (p *Pool) queueForSlot(ctx context.Context, j *job) (older bool, err error) {
	key := SlotServedKey(j.req.Computer.ID)
	renew := !j.queued || p.mono()-j.queuedAt >= p.cfg.LeaseTTL/3
	for range maxRecordWrites {
		rec, rev, err := p.readSlotRecord(ctx, key)
		if err != nil {
			return false, fmt.Errorf("read %s: %w", key, err)
		}
		now := time.Now().UTC()
		if !renew || rec.Seq > j.seq {
			return rec.olderWaiting(j.seq, now), nil
		}
		sent := p.mono()
		next := rec
		next.Waiting = rec.withWaiter(SlotWaiter{Seq: j.seq, Worker: p.cfg.ID, Until: now.Add(p.cfg.LeaseTTL)}, now)
		ok, err := p.writeSlotRecord(ctx, key, next, rev)
		if err != nil {
			return false, err
		}
		if ok {
			j.queued, j.queuedAt = true, sent
			return rec.olderWaiting(j.seq, now), nil
		}
	}
	return false, fmt.Errorf("write %s: still contended after %d attempts", key, maxRecordWrites)
}

// leaveSlotQueue removes the job from its slot's waiting list, if it is listed.
func (p *Pool) leaveSlotQueue(ctx context.Context, j *job) {
	if !j.queued {
		return
	}
	key := SlotServedKey(j.req.Computer.ID)
	for range maxRecordWrites {
		rec, rev, err := p.readSlotRecord(ctx, key)
		if err != nil {
			j.log.Warn().Err(err).Msg("leave the slot's waiting list (the entry lapses by itself)")
			return
		}
		next := rec
		next.Waiting = rec.withWaiter(SlotWaiter{Seq: j.seq}, time.Now())
		if ok, err := p.writeSlotRecord(ctx, key, next, rev); ok || err != nil {
			j.queued = false
			return
		}
	}
}

// writeSlotRecord stores rec if key is still at revision rev (0: absent); ok is false
// when another write came first.
func (p *Pool) writeSlotRecord(ctx context.Context, key string, rec SlotRecord, rev uint64) (ok bool, err error) {
	val, err := json.Marshal(rec)
	if err != nil {
		return false, err
	}
	m := nats.NewMsg(kvSubject(key))
	m.Data = val
	ack, err := p.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev))
	if err != nil {
		p.records.Delete(key)
		if isWrongLastSeq(err) {
			return false, nil
		}
		return false, fmt.Errorf("write %s: %w", key, err)
	}
	p.records.Store(key, cachedRecord{rec: rec, rev: ack.Sequence})
	return true, nil
}

// cachedRecord is a slot record as this pool last wrote it, at its revision.
type cachedRecord struct {
	rec SlotRecord
	rev uint64
}

// admitFromCache is admit's fast path for a first delivery on a slot this pool wrote
// last: when the record it wrote makes the job runnable, one compare-and-set on that
// revision both proves the record unchanged since and admits the job (no read). Any
// other case, or a failed write, goes the slow way (ok false).
func (p *Pool) admitFromCache(ctx context.Context, j *job, key string) (ok bool, err error) {
	v, cached := p.records.Load(key)
	if !cached || j.delivery > 1 {
		return false, nil
	}
	c := v.(cachedRecord)
	now := time.Now().UTC()
	if c.rec.Seq >= j.seq || c.rec.olderWaiting(j.seq, now) {
		return false, nil
	}
	return p.writeSlotRecord(ctx, key, p.newestRecord(j, c.rec, now), c.rev)
}

// newestRecord is rec with the job written as the slot's newest request (and out of
// the waiting list).
func (p *Pool) newestRecord(j *job, rec SlotRecord, now time.Time) SlotRecord {
	return SlotRecord{
		Seq: j.seq, Reservation: j.req.Reservation.ID, Request: j.req.Request.ID, Kind: j.req.Kind,
		Worker: p.cfg.ID, Delivery: j.delivery, At: now, Waiting: rec.withWaiter(SlotWaiter{Seq: j.seq}, now),
	}
}

// readSlotRecord reads key at the stream leader; revision 0 when it does not exist.
func (p *Pool) readSlotRecord(ctx context.Context, key string) (SlotRecord, uint64, error) {
	m, err := p.leaderGet(ctx, kvStream(messages.BucketSlotLeases), msgGetRequest{LastBySubject: kvSubject(key)})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return SlotRecord{}, 0, nil
	}
	if err != nil {
		return SlotRecord{}, 0, err
	}
	var rec SlotRecord
	if len(m.Data) > 0 {
		if err := json.Unmarshal(m.Data, &rec); err != nil {
			return SlotRecord{}, 0, fmt.Errorf("decode %s: %w", key, err)
		}
	}
	return rec, m.Sequence, nil
}

// maxResultScan bounds the results of one reservation that resultOf reads.
const maxResultScan = 1000

// resultOf returns the stored result of request seq of the reservation, or nil. The
// reservation's last result answers in nearly every case; otherwise its results are
// read in order (a reservation has a handful).
func (p *Pool) resultOf(ctx context.Context, reservation int64, seq uint64) (*messages.Result, error) {
	subj := messages.ResultSubject(reservation)
	m, err := p.leaderGet(ctx, messages.StreamEvents, msgGetRequest{LastBySubject: subj})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if r, err := messages.DecodeResult(m.Data); err == nil && r.RequestSeq == seq {
		return r, nil
	}
	last := m.Sequence
	next := uint64(1)
	for range maxResultScan {
		m, err := p.leaderGet(ctx, messages.StreamEvents, msgGetRequest{Seq: next, NextBySubject: subj})
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if m.Sequence >= last {
			return nil, nil // the last one was read first
		}
		if r, err := messages.DecodeResult(m.Data); err == nil && r.RequestSeq == seq {
			return r, nil
		}
		next = m.Sequence + 1
	}
	return nil, fmt.Errorf("reservation %d has more than %d results", reservation, maxResultScan)
}

// msgGetRequest is JetStream's $JS.API.STREAM.MSG.GET request.
type msgGetRequest struct {
	Seq           uint64 `json:"seq,omitempty"`
	LastBySubject string `json:"last_by_subj,omitempty"`
	NextBySubject string `json:"next_by_subj,omitempty"`
}

// storedMsg is a message read from a stream (its headers are not needed here).
type storedMsg struct {
	Sequence uint64
	Data     []byte
}

// leaderGet reads a message through $JS.API.STREAM.MSG.GET, which the stream leader
// answers (a direct get may be answered by a follower that has not caught up).
func (p *Pool) leaderGet(ctx context.Context, stream string, req msgGetRequest) (*storedMsg, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, leaderGetTimeout)
	defer cancel()
	reply, err := p.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, body)
	if err != nil {
		return nil, fmt.Errorf("get from %s: %w", stream, err)
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Message *struct {
			Seq  uint64 `json:"seq"`
			Data []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, fmt.Errorf("get from %s: decode reply: %w", stream, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == int(jetstream.JSErrCodeMessageNotFound) || resp.Error.Code == 404 {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, fmt.Errorf("get from %s: %s (%d)", stream, resp.Error.Description, resp.Error.ErrCode)
	}
	if resp.Message == nil {
		return nil, fmt.Errorf("get from %s: empty reply", stream)
	}
	return &storedMsg{Sequence: resp.Message.Seq, Data: resp.Message.Data}, nil
}

// leaderGetTimeout bounds one read at the stream leader.
const leaderGetTimeout = 5 * time.Second

func kvStream(bucket string) string { return "KV_" + bucket }

func kvSubject(key string) string { return "$KV." + messages.BucketSlotLeases + "." + key }

// mono is the pool's monotonic clock: it keeps running while the process is stopped
// (SIGSTOP, a long pause), which is what lease expiry is measured against.
func (p *Pool) mono() time.Duration { return time.Since(p.clock0) }

// guardMargin is kept between a lease's earliest expiry and the last moment a step
// may start without asking the stream leader (clock rate differences, the step's own
// first round trip).
func (p *Pool) guardMargin() time.Duration { return p.cfg.LeaseTTL / 5 }

// guard returns nil while the job may still act on its slot. Within the lease's known
// validity it answers from the local clock; past it (a renewal is late, or the process
// was paused) it asks the stream leader whether the lease key still holds this job's
// value. A lost lease cancels the job with ErrLeaseLost. When the leader cannot be
// asked, the job may not act either (ErrLeaseUnconfirmed).
func (p *Pool) guard(ctx context.Context, j *job, l *lease) error {
	if l.isLost() {
		return ErrLeaseLost
	}
	if p.mono()+p.guardMargin() < time.Duration(l.validUntil.Load()) {
		return nil
	}
	m, err := p.leaderGet(ctx, kvStream(messages.BucketSlotLeases), msgGetRequest{LastBySubject: kvSubject(l.key)})
	switch {
	case err == nil && bytes.Equal(m.Data, l.value):
		return nil
	case err == nil || errors.Is(err, jetstream.ErrMsgNotFound):
		if !l.lost.Swap(true) {
			p.metrics().LeaseLost(metrics.LeaseLostGuard)
			j.log.Error().Str("slot", l.key).Uint64("fence", l.fence).Msg("slot lease lost (found at a step's guard): stopping the job")
		}
		if j.cancel != nil {
			j.cancel(ErrLeaseLost)
		}
		return ErrLeaseLost
	default:
		return fmt.Errorf("%w: %s: %w", ErrLeaseUnconfirmed, l.key, err)
	}
}

// finishUnadmitted ends a job that holds its slot's lease but may not run: admit found
// it stale (its request has a result, or the slot served a newer one) or failed.
// A stale delivery leaves an info event with both sequences and touches nothing; a
// superseded request gets its one failed result (code superseded).
func (p *Pool) finishUnadmitted(ctx context.Context, j *job, l *lease, a admission, err error) (tail func()) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	switch {
	case errors.Is(err, ErrLeaseLost):
		j.log.Warn().Err(err).Msg("slot lease lost before the job started: request handed back")
		j.settle("nak (lease lost)", func() error { return j.msg.NakWithDelay(p.retryDelay(j.delivery)) })
		return nil
	case err != nil:
		p.fail(sctx, j, messages.Result{}, fmt.Errorf("claim slot: %w", err))
	case a.verdict == admitDone:
		info := fmt.Sprintf("stale delivery %d of request seq %d: it already has a result (%s by %s); nothing done",
			j.delivery, j.seq, a.result.Outcome, a.result.Worker)
		j.log.Warn().Uint64("slot_seq", a.served.Seq).Msg(info)
		p.noteStale(sctx, j, info)
		p.metrics().Stale()
		j.outcome = metrics.JobStale
		j.settle("ack (stale)", j.ack(sctx))
	case a.verdict == admitSuperseded:
		info := fmt.Sprintf("stale delivery %d of request seq %d: the slot has since served request seq %d (reservation %d, %s, by %s); nothing done",
			j.delivery, j.seq, a.served.Seq, a.served.Reservation, a.served.Kind, a.served.Worker)
		j.log.Warn().Uint64("slot_seq", a.served.Seq).Msg(info)
		p.noteStale(sctx, j, info)
		p.metrics().Superseded()
		p.failFinal(sctx, j, messages.Result{}, &CodedError{Code: CodeSuperseded, Err: fmt.Errorf("%w: slot %s has served request seq %d (reservation %d)",
			ErrSuperseded, j.req.Computer.ShortName, a.served.Seq, a.served.Reservation)}, noDeadLetter, j.ack(sctx))
	}
	p.release(sctx, j, l)
	return nil
}

// noteStale publishes the info event of a stale delivery (step 0: it is no step of
// the flow).
func (p *Pool) noteStale(ctx context.Context, j *job, info string) {
	ev := (&jobEvents{p: p, j: j}).loadlog(StepEvent{Name: messages.LoadInfo, Phase: messages.PhaseInfo, Info: info})
	if err := p.pub.Loadlog(ctx, ev); err != nil {
		j.log.Warn().Err(err).Msg("publish the stale delivery's info event")
	}
}
