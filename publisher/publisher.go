package publisher

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
)

// DefaultBudget is the default time one publish (or one LoadlogBatch) keeps trying.
// It must outlast a JetStream leader election: a 3-node cluster re-elects a stream
// leader within seconds, and after a SIGKILL of a leader publishing stalls up to ~8 s;
// a restarted single server takes about as long. A publish whose budget is spent
// fails; its caller must not go on as if it was stored.
const DefaultBudget = 60 * time.Second

// Options of a Publisher. The zero value is usable: every field has a default.
type Options struct {
	// Budget bounds all tries of one publish (or of one LoadlogBatch) together,
	// pauses included. default: DefaultBudget (60s).
	Budget time.Duration `json:"budget,omitempty"`
	// Timeout bounds one try. default: 5s.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Backoff is the pause after the first failed try, doubled after each further one
	// up to MaxBackoff, each shortened by a random jitter of up to 20%. default: 100ms.
	Backoff time.Duration `json:"backoff,omitempty"`
	// MaxBackoff caps the pause. default: 2s.
	MaxBackoff time.Duration `json:"max_backoff,omitempty"`
	// Attempts optionally caps the tries of one publish as well; 0 (the default)
	// means as many as fit in Budget.
	Attempts int `json:"attempts,omitempty"`
}

// jitter is the fraction by which each pause is randomly shortened.
const jitter = 0.2

func (o Options) withDefaults() Options {
	if o.Budget <= 0 {
		o.Budget = DefaultBudget
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
	watching  atomic.Bool          // WatchAsyncErrors was called: denials are reported
	denied    map[string]time.Time // subject → last permission violation
	deniedSig chan struct{}        // closed (and replaced) on each permission violation
}

// New returns a Publisher on js.
func New(js jetstream.JetStream, o Options, log zerolog.Logger) *Publisher {
	return &Publisher{js: js, o: o.withDefaults(), log: log, denied: map[string]time.Time{}, deniedSig: make(chan struct{})}
}

// Budget is how long one publish keeps trying (Options.Budget).
func (p *Publisher) Budget() time.Duration { return p.o.Budget }

// WatchAsyncErrors installs an asynchronous error handler on nc that logs the error
// (a denied publish shows only there; to the publisher it looks like a timeout) and
// remembers it, so that a publish failing soon after reports it. It keeps calling the
// handler that was installed before.
func (p *Publisher) WatchAsyncErrors(nc *nats.Conn) {
	prev := nc.Opts.AsyncErrorCB
	p.watching.Store(true)
	nc.SetErrorHandler(func(c *nats.Conn, s *nats.Subscription, err error) {
		p.mu.Lock()
		p.lastAsync, p.lastAt = err, time.Now()
		if subject, ok := deniedSubject(err); ok {
			p.noteDenied(subject, p.lastAt)
		}
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

// LoadlogBatch publishes events as Loadlog does, pipelined: they are sent at once
// (asynchronously, in order, on one connection, so the server stores them in order)
// and then awaited, one round trip for the batch instead of one per event. From the
// first event whose pipelined publish was not acknowledged on, the rest are published
// one by one, in order, each only after the one before it was stored (events already
// acknowledged are not sent again), so a failure mid-batch does not reorder it. Nothing
// is sent while the connection is down (it would wait in the client's reconnect buffer
// and be stored ahead of an earlier event lost with the old connection). One Budget
// bounds the whole call. An invalid event fails the call before anything is sent.
func (p *Publisher) LoadlogBatch(ctx context.Context, ls []*messages.Loadlog) error {
	msgs := make([]*nats.Msg, len(ls))
	for i, l := range ls {
		m, err := loadlogMsg(l)
		if err != nil {
			return err
		}
		msgs[i] = m
	}
	bctx, cancel := context.WithTimeoutCause(ctx, p.o.Budget, wait.ErrTimeout)
	defer cancel()
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	nc := p.js.Conn()
	for i, m := range msgs {
		if nc != nil && !nc.IsConnected() {
			break // the rest go one by one below
		}
		f, err := p.js.PublishMsgAsync(m, jetstream.WithMsgID(ls[i].MsgID()))
		if err != nil {
			p.log.Warn().Err(err).Str("msg_id", ls[i].MsgID()).Msg("pipelined publish not sent, publishing one by one")
			break
		}
		futures = append(futures, f)
	}
	acked := make([]bool, len(msgs))
	wctx, wcancel := context.WithTimeout(bctx, p.o.Timeout)
	for i, f := range futures {
		if err := awaitAck(wctx, f); err != nil {
			p.log.Warn().Err(err).Str("msg_id", ls[i].MsgID()).Msg("pipelined publish not acknowledged, publishing one by one")
			continue
		}
		acked[i] = true
	}
	wcancel()
	first := slices.Index(acked, false)
	if first < 0 {
		return nil
	}
	if n := countTrue(acked[first:]); n > 0 {
		// Not preventable after the fact: the server stored later events of the
		// pipeline but not an earlier one (lost with a connection).
		p.log.Error().Str("msg_id", ls[first].MsgID()).Int("stored_after_it", n).Msg("loadlog event stored after later ones of its batch")
	}
	for i := first; i < len(msgs); i++ {
		if acked[i] {
			continue
		}
		if err := p.publish(bctx, msgs[i], ls[i].MsgID()); err != nil {
			return fmt.Errorf("loadlog batch: event %d of %d and the %d after it not stored: %w", i+1, len(msgs), len(msgs)-i-1, err)
		}
	}
	return nil
}

// awaitAck waits for f's acknowledgement until ctx ends; an acknowledgement that is
// already there wins over an ended ctx.
func awaitAck(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	default:
	}
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
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
