package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/metrics"
)

// LeaseValue is the JSON value of a slot lease key in vclq_slots.
type LeaseValue struct {
	Worker      string        `json:"worker"`
	Reservation int64         `json:"reservation"`
	Request     int64         `json:"request"`
	Kind        messages.Kind `json:"kind"`
	Seq         uint64        `json:"seq"`
	Since       time.Time     `json:"since"`
}

// lease is a held slot lease.
type lease struct {
	key   string
	value []byte
	fence uint64        // revision at claim time
	rev   atomic.Uint64 // current revision (after renewals)
	lost  atomic.Bool
	// validUntil is when the lease can expire at the earliest, on the pool's monotonic
	// clock (Pool.mono): the send time of the last stored claim or renewal plus the
	// TTL. The server stores a write after it was sent, so its TTL runs out later.
	validUntil atomic.Int64

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

func (l *lease) isLost() bool { return l.lost.Load() }

// stopRenewing stops the renewal goroutine and waits for it.
func (l *lease) stopRenewing() {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
}

// Busy-slot polling backoff.
const (
	busyPollMin = 25 * time.Millisecond
	busyPollMax = time.Second
)

// acquire claims the job's slot: create-if-absent with the lease TTL. While the slot
// is busy it waits in place (InProgress keeps the delivery alive) with a bounded
// backoff, listed in the slot's waiting list and behind any older waiter, until
// Config.BusySlotWait after the job arrived (then ErrSlotBusy). It returns the cause
// when ctx ends first. waited says the job queues from the start (it yielded before).
func (p *Pool) acquire(ctx context.Context, j *job, waited bool) (*lease, error) {
	key := messages.SlotLeaseKey(j.req.Computer.ID)
	val, err := json.Marshal(LeaseValue{
		Worker: p.cfg.ID, Reservation: j.req.Reservation.ID, Request: j.req.Request.ID,
		Kind: j.req.Kind, Seq: j.seq, Since: j.since,
	})
	if err != nil {
		return nil, err
	}
	deadline := j.since.Add(p.cfg.BusySlotWait)
	backoff := busyPollMin
	var lastErr error
	for {
		older := false
		if waited {
			if older, err = p.queueForSlot(ctx, j); err != nil {
				j.log.Warn().Err(err).Msg("slot waiting list")
			}
		}
		if !older {
			sent := p.mono()
			rev, err := p.createLease(ctx, key, val)
			if err == nil {
				if waited {
					j.log.Info().Dur("waited", time.Since(j.since)).Msg("slot free: claimed")
				}
				l := &lease{key: key, value: val, fence: rev, stop: make(chan struct{}), done: make(chan struct{})}
				l.rev.Store(rev)
				l.validUntil.Store(int64(sent + p.cfg.LeaseTTL))
				return l, nil
			}
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			if errors.Is(err, jetstream.ErrKeyExists) {
				if !waited {
					// Get on the waiting list at once (no pause first): an older
					// request that arrives now must find this one listed.
					j.log.Info().Str("slot", key).Msg("slot busy: waiting")
					waited = true
					continue
				}
			} else {
				lastErr = err
				j.log.Warn().Err(err).Str("slot", key).Msg("claim slot failed, retrying")
			}
		}
		if time.Now().After(deadline) {
			if lastErr != nil && !waited {
				return nil, fmt.Errorf("slot %s: %w", key, lastErr)
			}
			return nil, fmt.Errorf("%w: %s still held (or older requests waiting) after %s", ErrSlotBusy, key, p.cfg.BusySlotWait)
		}
		if j.req.Kind == messages.KindReclaim && backoff >= 200*time.Millisecond {
			// Repeat the cancel request: the earlier job may have been pulled after
			// the first one was sent.
			p.requestCancel(j)
		}
		if wait.Sleep(ctx, min(backoff, time.Until(deadline)+time.Millisecond)) != nil {
			return nil, context.Cause(ctx)
		}
		backoff = min(2*backoff, busyPollMax)
	}
}

// claim acquires the slot's lease and admits the job (admit). A job that got the lease
// while an older request waits for the slot releases it and queues; the loop is
// bounded by acquire's deadline.
func (p *Pool) claim(ctx context.Context, j *job) (*lease, admission, error) {
	waited := false
	for {
		l, err := p.acquire(ctx, j, waited)
		if err != nil {
			return nil, admission{}, err
		}
		if p.cfg.SkipSlotOrdering {
			return l, admission{}, nil
		}
		adm, err := p.admit(ctx, j)
		if err != nil || adm.verdict != admitYield {
			return l, adm, err
		}
		j.log.Info().Str("slot", l.key).Msg("an older request waits for the slot: yielding to it")
		p.release(ctx, j, l)
		waited = true
	}
}

// createLease is kv.Create with the lease TTL. When this worker deleted the key last,
// it first tries a single publish expecting its own delete marker's revision: on a
// reused slot kv.Create needs three round trips (fail, read the marker, retry).
func (p *Pool) createLease(ctx context.Context, key string, val []byte) (uint64, error) {
	if v, ok := p.markers.LoadAndDelete(key); ok {
		m := nats.NewMsg(kvSubject(key))
		m.Data = val
		ack, err := p.js.PublishMsg(ctx, m, jetstream.WithMsgTTL(p.cfg.LeaseTTL), jetstream.WithExpectLastSequencePerSubject(v.(uint64)))
		if err == nil {
			return ack.Sequence, nil
		}
		if !isWrongLastSeq(err) {
			return 0, err
		}
	}
	return p.slots.Create(ctx, key, val, jetstream.KeyTTL(p.cfg.LeaseTTL))
}

// keepLease renews the lease every LeaseTTL/3 by publishing to its KV subject with
// the per-key TTL and the expected last revision (kv.Update would drop the TTL). A
// wrong revision means the lease is gone (expired, deleted or taken over): the job is
// cancelled with ErrLeaseLost at once. A transient failure is retried on the next tick
// unless the lease could expire before the tick after it: then the job is cancelled
// the same way, before the lease runs out rather than after.
func (p *Pool) keepLease(l *lease, j *job, cancel context.CancelCauseFunc) {
	defer close(l.done)
	every := p.cfg.LeaseTTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	lastOK := time.Now()
	subject := kvSubject(l.key)
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		m := nats.NewMsg(subject)
		m.Data = l.value
		sent := p.mono()
		ctx, c := context.WithTimeout(context.Background(), every)
		ack, err := p.js.PublishMsg(ctx, m, jetstream.WithMsgTTL(p.cfg.LeaseTTL), jetstream.WithExpectLastSequencePerSubject(l.rev.Load()))
		c()
		if err == nil {
			l.rev.Store(ack.Sequence)
			l.validUntil.Store(int64(sent + p.cfg.LeaseTTL))
			lastOK = time.Now()
			p.metrics().LeaseRenewed()
			continue
		}
		if isWrongLastSeq(err) {
			if rev, ok := p.ownRevision(l); ok {
				// An earlier renewal was stored but its reply was lost: the key still
				// holds this job's own value, so the lease is ours at that revision.
				j.log.Warn().Str("slot", l.key).Uint64("revision", rev).Msg("lease renewal reply was lost; adopting the stored revision")
				l.rev.Store(rev)
				p.metrics().LeaseRenewed()
				continue
			}
		}
		p.metrics().LeaseRenewalFailed()
		if isWrongLastSeq(err) || time.Since(lastOK)+every >= p.cfg.LeaseTTL {
			if !l.lost.Swap(true) {
				p.metrics().LeaseLost(metrics.LeaseLostRenewal)
			}
			j.log.Error().Err(err).Str("slot", l.key).Uint64("fence", l.fence).Msg("slot lease lost: cancelling the job")
			cancel(ErrLeaseLost)
			return
		}
		j.log.Warn().Err(err).Str("slot", l.key).Msg("lease renewal failed, retrying")
	}
}

// ownRevision reads the lease key: when it still holds exactly this job's lease value
// (worker, request and claim time make it unique), it returns the key's revision.
func (p *Pool) ownRevision(l *lease) (uint64, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.LeaseTTL/3)
	defer cancel()
	e, err := p.slots.Get(ctx, l.key)
	if err != nil || e.Operation() != jetstream.KeyValuePut || !bytes.Equal(e.Value(), l.value) {
		return 0, false
	}
	return e.Revision(), true
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// release deletes the lease at its last revision (kv.Delete with LastRevision, done
// as the equivalent publish to learn the delete marker's revision), unless it was lost.
func (p *Pool) release(ctx context.Context, j *job, l *lease) {
	if l.isLost() {
		return
	}
	m := nats.NewMsg(kvSubject(l.key))
	m.Header.Set(kvOperation, kvDelete)
	ack, err := p.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(l.rev.Load()))
	if err != nil {
		j.log.Warn().Err(err).Str("slot", l.key).Msg("release slot lease")
		return
	}
	p.markers.Store(l.key, ack.Sequence)
}

// The KV delete marker (nats.go's kv.Delete).
const (
	kvOperation = "KV-Operation"
	kvDelete    = "DEL"
)

// CancelRequest is the payload on messages.ControlCancelSubject(reservation): cancel
// every job of the reservation whose request sequence is below BeforeSeq.
type CancelRequest struct {
	Reservation int64         `json:"reservation"`
	BeforeSeq   uint64        `json:"before_seq"`
	Kind        messages.Kind `json:"kind,omitempty"`
	Worker      string        `json:"worker,omitempty"`
}

// RequestCancel asks every worker (core NATS, fire and forget) to cancel the jobs of
// reservation whose request sequence is below beforeSeq, with cause ErrCancelled.
func RequestCancel(nc *nats.Conn, c CancelRequest) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return nc.Publish(messages.ControlCancelSubject(c.Reservation), data)
}

func (p *Pool) requestCancel(j *job) {
	err := RequestCancel(p.nc, CancelRequest{Reservation: j.req.Reservation.ID, BeforeSeq: j.seq, Kind: j.req.Kind, Worker: p.cfg.ID})
	if err != nil {
		j.log.Warn().Err(err).Msg("publish cancel request")
	}
}

// onCancel cancels the matching local jobs.
func (p *Pool) onCancel(m *nats.Msg) {
	var c CancelRequest
	if err := json.Unmarshal(m.Data, &c); err != nil || c.Reservation <= 0 || m.Subject != messages.ControlCancelSubject(c.Reservation) {
		p.log.Warn().Str("subject", m.Subject).Msg("ignoring malformed cancel request")
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for j := range p.active {
		if j.req.Reservation.ID == c.Reservation && j.seq < c.BeforeSeq && j.cancel != nil {
			if context.Cause(p.jobsCtx) == nil {
				j.log.Info().Uint64("by_seq", c.BeforeSeq).Str("by_kind", string(c.Kind)).Str("by_worker", c.Worker).Msg("cancel requested")
			}
			j.cancel(ErrCancelled)
		}
	}
}
