package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/metrics"
	"github.com/vclq/vclq/publisher"
)

// settleTimeout bounds the publishes and KV calls that finish a job; they run on a
// context detached from the job's (which may be cancelled already). It lets a dead
// letter and a result each use the default publish budget.
const settleTimeout = 2*publisher.DefaultBudget + 10*time.Second

// job is the pool's state of one delivery.
type job struct {
	msg      jetstream.Msg
	seq      uint64
	delivery int
	req      *messages.Request
	since    time.Time
	log      zerolog.Logger

	cancel context.CancelCauseFunc
	state  atomic.Value // JobWaiting or JobRunning

	settleMu  sync.Mutex    // serialises settling and InProgress
	settled   chan struct{} // closed when the message was acked, nak'd or terminated
	abandoned atomic.Bool
	lease     atomic.Pointer[lease]

	// queued: the job is listed in its slot's waiting list (renewed at queuedAt, on
	// Pool.mono). Used by the job's own goroutine only.
	queued   bool
	queuedAt time.Duration

	// outcome is the delivery's outcome for its duration metric (metrics.Job*; empty:
	// handed back). Set by the job's own goroutine.
	outcome string
}

// settle acks, naks or terminates the message once; later calls do nothing.
func (j *job) settle(what string, f func() error) {
	j.settleMu.Lock()
	defer j.settleMu.Unlock()
	select {
	case <-j.settled:
		return
	default:
	}
	if err := f(); err != nil {
		j.log.Warn().Err(err).Str("action", what).Msg("settle message")
	}
	close(j.settled)
}

// inProgress extends the delivery's ack deadline unless the message is settled.
func (j *job) inProgress() {
	j.settleMu.Lock()
	defer j.settleMu.Unlock()
	select {
	case <-j.settled:
		return
	default:
	}
	if err := j.msg.InProgress(); err != nil {
		j.log.Warn().Err(err).Msg("in-progress signal failed")
	}
}

// ack acknowledges and waits for the server's confirmation, so that the lease is
// released only once the request can no longer be redelivered.
func (j *job) ack(ctx context.Context) func() error {
	return func() error { return j.msg.DoubleAck(ctx) }
}

// abandon hands the message back and stops renewing the lease without deleting it.
func (j *job) abandon() {
	j.abandoned.Store(true)
	if l := j.lease.Load(); l != nil {
		l.stopRenewing()
	}
	j.settle("nak (abandoned)", j.msg.Nak)
}

// process runs one delivery. It may return a tail (ack, release the lease) that the
// caller runs after freeing the job slot: the outcome is published by then, and the
// tail's round trips need not hold a slot.
func (p *Pool) process(pullCtx context.Context, msg jetstream.Msg) (tail func()) {
	meta, err := msg.Metadata()
	if err != nil {
		p.log.Error().Err(err).Str("subject", msg.Subject()).Msg("message without JetStream metadata")
		_ = msg.Nak()
		return nil
	}
	j := &job{
		msg:      msg,
		seq:      meta.Sequence.Stream,
		delivery: int(meta.NumDelivered),
		since:    time.Now().UTC(),
		settled:  make(chan struct{}),
	}
	j.state.Store(JobWaiting)
	j.log = p.log.With().Uint64("seq", j.seq).Int("delivery", j.delivery).Logger()
	defer p.metrics().JobStarted()()
	defer p.observeJob(j)
	if j.delivery > 1 {
		p.metrics().Redelivery()
	}
	defer func() {
		if r := recover(); r != nil {
			j.log.Error().Interface("panic", r).Bytes("stack", debug.Stack()).Msg("worker panic while processing a job")
			if l := j.lease.Load(); l != nil {
				l.stopRenewing() // the lease expires; nothing more touches the slot
			}
			j.settle("nak (panic)", msg.Nak)
		}
	}()
	if pullCtx.Err() != nil {
		// Arrived after shutdown began: hand it back at once.
		j.settle("nak (shutdown)", msg.Nak)
		return nil
	}

	req, err := messages.DecodeRequest(msg.Data())
	if err == nil {
		if k, ok := messages.KindFromSubject(msg.Subject()); !ok || k != req.Kind {
			err = fmt.Errorf("%w: kind %q published on subject %q", messages.ErrInvalid, req.Kind, msg.Subject())
		}
	}
	if err != nil {
		p.reject(j, err)
		return nil
	}
	j.req = req
	j.log = j.log.With().Int64("reservation", req.Reservation.ID).Int64("computer", req.Computer.ID).
		Str("kind", string(req.Kind)).Logger()

	ctx, cancel := context.WithCancelCause(p.jobsCtx)
	defer cancel(nil)
	j.cancel = cancel
	p.track(j)
	defer p.untrack(j)

	// InProgress every AckWait/3 until the message is settled.
	go p.keepInProgress(j)
	defer func() {
		if tail == nil {
			j.settle("nak (unsettled)", msg.Nak) // never leave a message unsettled
		}
	}()

	if req.Kind == messages.KindReclaim {
		p.requestCancel(j)
	}
	l, adm, err := p.claim(ctx, j)
	if j.queued && (err != nil || adm.verdict != admitRun) {
		p.leaveSlotQueue(context.WithoutCancel(ctx), j)
	}
	if l == nil {
		p.finishUnclaimed(ctx, j, err)
		return nil
	}
	if err != nil || adm.verdict != admitRun {
		return p.finishUnadmitted(ctx, j, l, adm, err)
	}
	j.lease.Store(l)
	go p.keepLease(l, j, cancel)
	j.state.Store(JobRunning)

	res, herr := p.runHandler(ctx, j, l)
	// The lease is renewed until it is released: a result publish may wait out a
	// leader election (the publisher's budget), longer than the lease TTL.
	if j.abandoned.Load() {
		return nil
	}
	cause := context.Cause(ctx)
	if ctx.Err() == nil {
		cause = nil
	}
	return p.finish(ctx, j, l, res, herr, cause)
}

func (p *Pool) runHandler(ctx context.Context, j *job, l *lease) (res messages.Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			j.log.Error().Interface("panic", r).Bytes("stack", debug.Stack()).Msg("handler panic")
			err = &CodedError{Code: CodeHandlerPanic, Err: fmt.Errorf("handler panic: %v", r)}
		}
	}()
	return p.h.Handle(ctx, &Job{
		Request:    j.req,
		Seq:        j.seq,
		Delivery:   j.delivery,
		MaxDeliver: p.cfg.MaxDeliver,
		Fence:      l.fence,
		Guard:      func(ctx context.Context) error { return p.guard(ctx, j, l) },
		Events:     &jobEvents{p: p, j: j},
		Worker:     p.cfg.ID,
	})
}

// lastDelivery reports whether a failure now is final (no delivery budget left).
func (p *Pool) lastDelivery(j *job) bool {
	return p.cfg.MaxDeliver > 0 && j.delivery >= p.cfg.MaxDeliver
}

// retryDelay is the Nak delay after a retryable failure of the given delivery.
func (p *Pool) retryDelay(delivery int) time.Duration {
	d := p.cfg.RetryDelay
	for i := 1; i < delivery && d < p.cfg.MaxRetryDelay; i++ {
		d *= 2
	}
	return min(d, p.cfg.MaxRetryDelay)
}

// finishUnclaimed ends a job that never got its slot.
func (p *Pool) finishUnclaimed(ctx context.Context, j *job, err error) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	switch {
	case errors.Is(err, ErrCancelled):
		j.log.Info().Msg("cancelled while waiting for the slot")
		p.failFinal(sctx, j, messages.Result{}, &CodedError{Code: CodeCancelled, Err: err}, noDeadLetter, j.ack(sctx))
	case errors.Is(err, ErrShutdown):
		j.settle("nak (shutdown)", j.msg.Nak)
	case errors.Is(err, ErrSlotBusy):
		// The wait in place is over: hand it back with a delay. This counts against
		// MaxDeliver; on the last delivery the sweeper dead-letters it.
		j.log.Warn().Err(err).Dur("waited", time.Since(j.since)).Msg("slot still busy, handing the request back")
		j.settle("nak (busy)", func() error { return j.msg.NakWithDelay(p.cfg.RetryDelay) })
	default:
		p.fail(sctx, j, messages.Result{}, fmt.Errorf("claim slot: %w", err))
	}
}

// finish publishes the job's outcome, settles the message and releases the lease. On
// success it returns the ack and release as a tail to run after the job slot is freed.
func (p *Pool) finish(ctx context.Context, j *job, l *lease, res messages.Result, herr, cause error) (tail func()) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	lost := errors.Is(cause, ErrLeaseLost) || l.isLost()
	defer l.stopRenewing() // renewed while the outcome is published; stopped before any release
	switch {
	case lost:
		// Never touch the slot again, and publish nothing: another delivery may own
		// the slot and may have published this request's result already. The
		// message goes back; its next delivery finds what the slot has served since
		// (admit) and resumes, or records itself as stale.
		j.log.Warn().Err(herr).Msg("slot lease lost: job stopped, nothing published, request handed back")
		j.settle("nak (lease lost)", func() error { return j.msg.NakWithDelay(p.retryDelay(j.delivery)) })
		return nil
	case herr == nil:
		published, err := p.succeed(sctx, j, res)
		if err != nil {
			j.log.Error().Err(err).Msg("publish result failed: handing the request back")
			j.settle("nak (result)", func() error { return j.msg.NakWithDelay(p.retryDelay(j.delivery)) })
		}
		if published {
			return func() {
				tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
				defer cancel()
				// Confirmed ack first: once the lease is gone the request must no
				// longer be deliverable.
				j.settle("ack", j.ack(tctx))
				p.release(tctx, j, l)
				j.log.Debug().Msg("job done")
			}
		}
	case errors.Is(cause, ErrShutdown):
		j.log.Info().Err(herr).Msg("stopped by shutdown: handing the request back")
		j.settle("nak (shutdown)", j.msg.Nak)
	case errors.Is(cause, ErrCancelled):
		j.log.Info().Err(herr).Msg("cancelled by a later request")
		p.failFinal(sctx, j, res, &CodedError{Code: CodeCancelled, Err: fmt.Errorf("%w: %v", ErrCancelled, herr)}, noDeadLetter, j.ack(sctx))
	default:
		p.fail(sctx, j, res, herr)
	}
	l.stopRenewing()
	p.release(sctx, j, l)
	return nil
}

// succeed publishes a success result; the caller acks. published is false when the
// handler's result was invalid (then a failed result was published and the message
// terminated) or the publish failed (err).
func (p *Pool) succeed(ctx context.Context, j *job, res messages.Result) (published bool, err error) {
	r := p.envelope(j, res, messages.OutcomeSuccess)
	r.ErrorCode, r.Error = "", ""
	if err := p.publishResult(ctx, j, &r); err != nil {
		if publisher.IsInvalid(err) { // validated before any publish
			j.log.Error().Err(err).Msg("handler returned an invalid result")
			p.failFinal(ctx, j, messages.Result{}, &CodedError{Code: CodeBadResult, Err: fmt.Errorf("handler result: %w", err)}, noDeadLetter, j.msg.Term)
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// fail handles a handler (or claim) error: permanent or on the last delivery it is
// final; otherwise the message is Nak'd with a backoff.
func (p *Pool) fail(ctx context.Context, j *job, res messages.Result, herr error) {
	switch {
	case IsPermanent(herr):
		// Dead-lettered too, so that `vclq dlq replay` can re-drive it once the
		// cause (a missing image, a permission) is fixed.
		j.log.Warn().Err(herr).Msg("job failed permanently: dead letter")
		p.failFinal(ctx, j, res, herr, deadLetterPermanent, j.msg.Term)
	case p.lastDelivery(j):
		j.log.Warn().Err(herr).Msg("job failed on its last delivery: dead letter")
		p.failFinal(ctx, j, res, herr, deadLetterBudget, j.msg.Term)
	default:
		d := p.retryDelay(j.delivery)
		j.log.Warn().Err(herr).Dur("retry_in", d).Msg("job failed, will be retried")
		j.settle("nak", func() error { return j.msg.NakWithDelay(d) })
	}
}

// deadLetterWhy says whether, and why, a final failure is dead-lettered.
type deadLetterWhy int

const (
	noDeadLetter        deadLetterWhy = iota // cancelled, superseded, invalid handler result
	deadLetterBudget                         // failed on its last delivery
	deadLetterPermanent                      // failed permanently (Permanent): never retried
)

// deadLetterReason is the dead letter's Vclq-Reason.
func (p *Pool) deadLetterReason(j *job, why deadLetterWhy, text string) string {
	if why == deadLetterPermanent {
		return fmt.Sprintf("permanent failure on delivery %d of %d (not retried): %s", j.delivery, p.cfg.MaxDeliver, text)
	}
	return fmt.Sprintf("delivery budget exhausted (%d of %d deliveries): %s", j.delivery, p.cfg.MaxDeliver, text)
}

// failFinal publishes the dead letter (unless why is noDeadLetter) and the failed
// result, then settles with final (Ack or Term). If a publish fails the message is
// Nak'd instead: it comes back (or, past MaxDeliver, the sweeper moves it).
func (p *Pool) failFinal(ctx context.Context, j *job, res messages.Result, herr error, why deadLetterWhy, final func() error) {
	code := CodeFailed
	var ce *CodedError
	if errors.As(herr, &ce) {
		code = ce.Code
	}
	if why == deadLetterBudget && code == CodeFailed {
		code = CodeMaxDeliver
	}
	r := p.envelope(j, res, messages.OutcomeFailed)
	if r.RequestState == "" || !messages.ValidState(r.RequestState) {
		r.RequestState = messages.StateFailed
	}
	// A superseded request leaves the computer to the newer request it serves.
	keepComputer := errors.Is(herr, ErrSuperseded)
	if keepComputer {
		r.ComputerState = ""
	} else if r.ComputerState == "" || !messages.ValidState(r.ComputerState) {
		r.ComputerState = messages.StateFailed
	}
	r.ErrorCode = code
	r.Error = messages.CleanText(herr.Error(), messages.MaxInfoLen)
	if why != noDeadLetter {
		if err := p.deadLetter(ctx, j, p.deadLetterReason(j, why, r.Error)); err != nil {
			j.log.Error().Err(err).Msg("dead letter failed: handing the request back")
			j.settle("nak (dead letter)", j.msg.Nak)
			return
		}
		reason := metrics.DeadLetterMaxDeliver
		if why == deadLetterPermanent {
			reason = metrics.DeadLetterPermanent
		}
		p.metrics().DeadLetter(reason)
	}
	if err := p.publishResult(ctx, j, &r); err != nil {
		if publisher.IsInvalid(err) {
			// The handler's extra fields made it invalid: publish the bare failure.
			r = p.envelope(j, messages.Result{RequestState: r.RequestState, ComputerState: r.ComputerState}, messages.OutcomeFailed)
			r.ErrorCode, r.Error = code, messages.CleanText(herr.Error(), messages.MaxInfoLen)
			err = p.publishResult(ctx, j, &r)
		}
		if err != nil {
			j.log.Error().Err(err).Msg("publish failed result: handing the request back")
			j.settle("nak (result)", j.msg.Nak)
			return
		}
	}
	j.settle("final", final)
}

// reject handles a message that failed decoding or validation: dead letter, rejected
// result, terminate. Never retried.
func (p *Pool) reject(j *job, reason error) {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	hint := messages.HintFrom(j.msg.Data())
	text := messages.CleanText(reason.Error(), messages.MaxInfoLen)
	j.log.Warn().Int64("reservation", hint.ReservationID).Str("reason", text).Msg("request rejected")
	if err := p.deadLetterHint(ctx, j, hint, "rejected: "+text); err != nil {
		j.log.Error().Err(err).Msg("dead letter failed: handing the request back")
		j.settle("nak", func() error { return j.msg.NakWithDelay(p.retryDelay(j.delivery)) })
		return
	}
	p.metrics().DeadLetter(metrics.DeadLetterRejected)
	r := p.rejected(hint, j.seq, j.delivery, text)
	if err := p.publishResult(ctx, j, &r); err != nil {
		j.log.Error().Err(err).Msg("publish rejected result failed: handing the request back")
		j.settle("nak", func() error { return j.msg.NakWithDelay(p.retryDelay(j.delivery)) })
		return
	}
	j.settle("term", func() error { return j.msg.TermWithReason("invalid request") })
}

func (p *Pool) rejected(hint messages.Hint, seq uint64, deliveries int, text string) messages.Result {
	r := messages.Result{
		Schema:        messages.SchemaVersion,
		ReservationID: hint.ReservationID,
		RequestID:     hint.RequestID,
		ComputerID:    hint.ComputerID,
		Kind:          hint.Kind,
		Outcome:       messages.OutcomeRejected,
		ErrorCode:     CodeInvalid,
		Error:         text,
		Worker:        p.cfg.ID,
		Time:          time.Now().UTC(),
		Deliveries:    deliveries,
		RequestSeq:    seq,
	}
	if hint.ReservationID > 0 {
		r.RequestState = messages.StateFailed
	}
	return r
}

func (p *Pool) deadLetter(ctx context.Context, j *job, reason string) error {
	return p.deadLetterHint(ctx, j, messages.Hint{
		Kind: j.req.Kind, ReservationID: j.req.Reservation.ID, RequestID: j.req.Request.ID, ComputerID: j.req.Computer.ID,
	}, reason)
}

func (p *Pool) deadLetterHint(ctx context.Context, j *job, h messages.Hint, reason string) error {
	return p.pub.DeadLetter(ctx, publisher.DeadLetter{
		Data: j.msg.Data(), Header: j.msg.Headers(), Subject: j.msg.Subject(), Seq: j.seq, Deliveries: j.delivery,
		Kind: h.Kind, ReservationID: h.ReservationID, RequestID: h.RequestID, Reason: reason, Worker: p.cfg.ID,
	})
}

// envelope fills a result's identifying fields from the job.
func (p *Pool) envelope(j *job, res messages.Result, outcome messages.Outcome) messages.Result {
	res.Schema = messages.SchemaVersion
	res.ReservationID = j.req.Reservation.ID
	res.RequestID = j.req.Request.ID
	res.ComputerID = j.req.Computer.ID
	res.Kind = j.req.Kind
	res.Outcome = outcome
	res.Worker = p.cfg.ID
	res.Time = time.Now().UTC()
	res.Deliveries = j.delivery
	res.RequestSeq = j.seq
	return res
}

// keepInProgress tells the server every AckWait/3 that the job is alive, until the
// message is settled. A failure is logged: the lease, not the delivery, fences the slot.
func (p *Pool) keepInProgress(j *job) {
	t := time.NewTicker(p.cfg.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-j.settled:
			return
		case <-t.C:
			j.inProgress()
		}
	}
}

// jobEvents publishes a job's loadlog events.
type jobEvents struct {
	p *Pool
	j *job
}

// PublishBudget is how long a publish keeps trying (publisher.Options.Budget): the
// flow runner retries and waits for the job's events that long.
func (e *jobEvents) PublishBudget() time.Duration { return e.p.pub.Budget() }

// LoadlogBatch publishes events in order with one round trip (publisher.LoadlogBatch).
func (e *jobEvents) LoadlogBatch(ctx context.Context, evs []StepEvent) error {
	if e.fencedOut(ctx, len(evs)) {
		return nil
	}
	ls := make([]*messages.Loadlog, len(evs))
	for i, ev := range evs {
		ls[i] = e.loadlog(ev)
	}
	if err := e.p.pub.LoadlogBatch(ctx, ls); err != nil {
		return fmt.Errorf("reservation %d: %d loadlog events: %w", e.j.req.Reservation.ID, len(ls), err)
	}
	e.observeSteps(evs...)
	return nil
}

func (e *jobEvents) Loadlog(ctx context.Context, ev StepEvent) error {
	if e.fencedOut(ctx, 1) {
		return nil
	}
	l := e.loadlog(ev)
	if err := e.p.pub.Loadlog(ctx, l); err != nil {
		return fmt.Errorf("reservation %d: loadlog %s %s: %w", l.ReservationID, l.Name, l.Phase, err)
	}
	e.observeSteps(ev)
	return nil
}

// fencedOut reports (and logs) that the job lost its slot's lease, so that its events
// are not published: another delivery may own the slot and may have published this
// request's result already. (An event published in the moment between this check and
// the store is still ignored by every reader: see eventlog.Late.)
func (e *jobEvents) fencedOut(ctx context.Context, n int) bool {
	l := e.j.lease.Load()
	if l == nil || !errors.Is(e.p.guard(ctx, e.j, l), ErrLeaseLost) {
		return false
	}
	e.j.log.Warn().Int("events", n).Msg("slot lease lost: loadlog events of the fenced-out job not published")
	return true
}

func (e *jobEvents) loadlog(ev StepEvent) *messages.Loadlog {
	at := ev.At
	if at.IsZero() {
		at = time.Now()
	}
	return &messages.Loadlog{
		Schema:        messages.SchemaVersion,
		ReservationID: e.j.req.Reservation.ID,
		RequestID:     e.j.req.Request.ID,
		ComputerID:    e.j.req.Computer.ID,
		Kind:          e.j.req.Kind,
		Name:          ev.Name,
		Phase:         ev.Phase,
		Step:          ev.Step,
		Info:          messages.CleanText(ev.Info, messages.MaxInfoLen),
		DurationMS:    ev.Duration.Milliseconds(),
		Time:          at.UTC(),
		Worker:        e.p.cfg.ID,
		RequestSeq:    e.j.seq,
	}
}
