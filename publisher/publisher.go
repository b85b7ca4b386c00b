package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/messages"
)

// Options of a Publisher. The zero value is usable: every field has a default.
type Options struct {
	// Attempts bounds the tries of one publish. default: 5.
	Attempts int `json:"attempts,omitempty"`
	// Timeout bounds one try (when the caller's context has no earlier deadline).
	// default: 5s.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Backoff is the pause after the first failed try, doubled after each further one
	// up to MaxBackoff. default: 100ms.
	Backoff time.Duration `json:"backoff,omitempty"`
	// MaxBackoff caps the pause. default: 2s.
	MaxBackoff time.Duration `json:"max_backoff,omitempty"`
}

func (o Options) withDefaults() Options {
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Backoff <= 0 {
		o.Backoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 2 * time.Second
	}
	return o
}

// Publisher publishes events and dead letters. It is safe for concurrent use.
type Publisher struct {
	js  jetstream.JetStream
	o   Options
	log zerolog.Logger

	mu        sync.Mutex
	lastAsync error
	lastAt    time.Time
}

// New returns a Publisher on js.
func New(js jetstream.JetStream, o Options, log zerolog.Logger) *Publisher {
	return &Publisher{js: js, o: o.withDefaults(), log: log}
}

// WatchAsyncErrors installs an asynchronous error handler on nc that logs the error
// (a denied publish shows only there; to the publisher it looks like a timeout) and
// remembers it, so that a publish failing soon after reports it. It keeps calling the
// handler that was installed before.
func (p *Publisher) WatchAsyncErrors(nc *nats.Conn) {
	prev := nc.Opts.AsyncErrorCB
	nc.SetErrorHandler(func(c *nats.Conn, s *nats.Subscription, err error) {
		p.mu.Lock()
		p.lastAsync, p.lastAt = err, time.Now()
		p.mu.Unlock()
		if prev != nil {
			prev(c, s, err)
			return
		}
		ev := p.log.Error().Err(err)
		if s != nil {
			ev = ev.Str("subject", s.Subject)
		}
		ev.Msg("nats asynchronous error")
	})
}

// Loadlog publishes a loadlog event on vcl.events.loadlog.<reservation> with its
// dedup id. It validates the event first (ErrInvalidEvent, not retried).
func (p *Publisher) Loadlog(ctx context.Context, l *messages.Loadlog) error {
	m, err := loadlogMsg(l)
	if err != nil {
		return err
	}
	return p.publish(ctx, m, l.MsgID())
}

// loadlogMsg validates l and makes its message (ErrInvalidEvent if l is invalid).
func loadlogMsg(l *messages.Loadlog) (*nats.Msg, error) {
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("%w: loadlog %s: %w", ErrInvalidEvent, l.MsgID(), err)
	}
	data, err := json.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("%w: loadlog %s: %w", ErrInvalidEvent, l.MsgID(), err)
	}
	m := nats.NewMsg(messages.LoadlogSubject(l.ReservationID))
	m.Data = data
	setCommon(m.Header, l.ReservationID, l.RequestID, l.Kind, l.Worker)
	m.Header.Set(messages.HeaderState, l.Name)
	return m, nil
}

// LoadlogBatch publishes events as Loadlog does, pipelined: all are sent at once
// (asynchronously, in order, on one connection, so the server stores them in order)
// and then awaited, one round trip for the batch instead of one per event. Events
// whose asynchronous publish failed are published again one by one, in order, with
// Loadlog's retries; such an event may then be stored after later ones of the batch
// (its step number and time still place it). An invalid event fails the call before
// anything is sent.
func (p *Publisher) LoadlogBatch(ctx context.Context, ls []*messages.Loadlog) error {
	msgs := make([]*nats.Msg, len(ls))
	for i, l := range ls {
		m, err := loadlogMsg(l)
		if err != nil {
			return err
		}
		msgs[i] = m
	}
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		f, err := p.js.PublishMsgAsync(m, jetstream.WithMsgID(ls[i].MsgID()))
		if err != nil {
			break // the rest go one by one below
		}
		futures[i] = f
	}
	wctx, cancel := context.WithTimeout(ctx, p.o.Timeout)
	defer cancel()
	failed := make([]bool, len(msgs))
	for i, f := range futures {
		if f == nil {
			failed[i] = true
			continue
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			p.log.Warn().Err(err).Str("msg_id", ls[i].MsgID()).Msg("pipelined publish failed, retrying alone")
			failed[i] = true
		case <-wctx.Done():
			failed[i] = true
		}
	}
	for i, m := range msgs {
		if failed[i] {
			if err := p.publish(ctx, m, ls[i].MsgID()); err != nil {
				return err
			}
		}
	}
	return nil
}

// Result publishes a result event on vcl.events.result.<reservation> with its dedup
// id (one per request delivery outcome: the first stored wins). It validates the event
// first (ErrInvalidEvent, not retried).
func (p *Publisher) Result(ctx context.Context, r *messages.Result) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("%w: result %s: %w", ErrInvalidEvent, r.MsgID(), err)
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("%w: result %s: %w", ErrInvalidEvent, r.MsgID(), err)
	}
	m := nats.NewMsg(messages.ResultSubject(r.ReservationID))
	m.Data = data
	setCommon(m.Header, r.ReservationID, r.RequestID, r.Kind, r.Worker)
	if r.RequestState != "" {
		m.Header.Set(messages.HeaderState, r.RequestState)
	}
	return p.publish(ctx, m, r.MsgID())
}

// DeadLetter is a request that could not be processed.
type DeadLetter struct {
	// Data is the original payload, unchanged.
	Data []byte
	// Header is the original message's headers; they are kept, except Nats-* ones.
	Header nats.Header
	// Subject and Seq locate the original in VCL_REQUESTS; Deliveries is how often it
	// was delivered.
	Subject    string
	Seq        uint64
	Deliveries int
	// Kind and ReservationID place it under vcl.dlq.<kind>.<reservation> (zero/empty
	// when unknown).
	Kind          messages.Kind
	ReservationID int64
	RequestID     int64
	// Reason says why it could not be processed.
	Reason string
	Worker string
	// Time of the dead-lettering. default: now.
	Time time.Time
}

// DeadLetterMsgID is the dedup id of the dead letter of request sequence seq.
func DeadLetterMsgID(seq uint64) string { return "dlq-" + strconv.FormatUint(seq, 10) }

// DeadLetter publishes d on messages.DeadLetterSubject(kind, reservation) with the
// original payload and headers (Vclq-Reason, Vclq-Original-Subject,
// Vclq-Original-Sequence, Vclq-Deliveries, Vclq-Dead-Letter-Time, Vclq-Reservation,
// Vclq-Request, Vclq-Kind, Vclq-Worker) and Nats-Msg-Id dlq-<seq>.
func (p *Publisher) DeadLetter(ctx context.Context, d DeadLetter) error {
	if d.Time.IsZero() {
		d.Time = time.Now()
	}
	m := nats.NewMsg(messages.DeadLetterSubject(d.Kind, d.ReservationID))
	m.Data = d.Data
	for k, vs := range d.Header {
		if strings.HasPrefix(strings.ToLower(k), "nats-") {
			continue
		}
		for _, v := range vs {
			m.Header.Add(k, v)
		}
	}
	setCommon(m.Header, d.ReservationID, d.RequestID, d.Kind, d.Worker)
	m.Header.Set(messages.HeaderReason, messages.CleanText(d.Reason, 1024))
	m.Header.Set(messages.HeaderOrigSubject, d.Subject)
	m.Header.Set(messages.HeaderOrigSequence, strconv.FormatUint(d.Seq, 10))
	m.Header.Set(messages.HeaderDeliveries, strconv.Itoa(d.Deliveries))
	m.Header.Set(messages.HeaderDeadLetterAt, d.Time.UTC().Format(time.RFC3339Nano))
	return p.publish(ctx, m, DeadLetterMsgID(d.Seq))
}

func setCommon(h nats.Header, reservation, request int64, kind messages.Kind, worker string) {
	if reservation > 0 {
		h.Set(messages.HeaderReservation, strconv.FormatInt(reservation, 10))
	}
	if request > 0 {
		h.Set(messages.HeaderRequest, strconv.FormatInt(request, 10))
	}
	if kind != "" {
		h.Set(messages.HeaderKind, string(kind))
	}
	if worker != "" {
		h.Set(messages.HeaderWorker, worker)
	}
}

// publish stores m with the dedup id, retrying with backoff. It blocks until the
// server acknowledged, the attempts are spent, or ctx ends.
func (p *Publisher) publish(ctx context.Context, m *nats.Msg, id string) error {
	start := time.Now()
	backoff := p.o.Backoff
	var last error
	for attempt := 1; attempt <= p.o.Attempts; attempt++ {
		actx, cancel := context.WithTimeout(ctx, p.o.Timeout)
		_, err := p.js.PublishMsg(actx, m, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
		if attempt < p.o.Attempts {
			p.log.Warn().Err(err).Str("subject", m.Subject).Str("msg_id", id).Int("attempt", attempt).Msg("publish failed, retrying")
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			if ctx.Err() != nil {
				break
			}
			backoff = min(2*backoff, p.o.MaxBackoff)
		}
	}
	err := fmt.Errorf("%w: %s (id %s) after %s: %w", ErrPublish, m.Subject, id, time.Since(start).Round(time.Millisecond), last)
	if ctx.Err() != nil {
		err = fmt.Errorf("%w: %w", err, context.Cause(ctx))
	}
	p.mu.Lock()
	async, at := p.lastAsync, p.lastAt
	p.mu.Unlock()
	if async != nil && time.Since(at) < time.Minute {
		err = fmt.Errorf("%w (recent asynchronous error, e.g. a denied publish: %v)", err, async)
	}
	return err
}

// IsInvalid reports whether err is an invalid-event error (a bug, never retried).
func IsInvalid(err error) bool { return errors.Is(err, ErrInvalidEvent) }
