package publisher

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
)

// errTryTimeout is the cause of a try's context when the try's own Timeout ended it.
var errTryTimeout = errors.New("publisher: try timed out")

// publish stores m with the dedup id id, the same on every try, so a try whose
// acknowledgement was lost and the retry after it store m once. It retries what a
// leader election, a restarting server or a reconnecting client can cause (timeouts,
// no responders, JetStream temporarily unavailable, a connection that is down) with a
// capped, jittered backoff for at most Budget in all, every try bounded by Timeout,
// and stops at once on what no retry fixes (ErrRejected). It returns nil only once the
// server acknowledged m; otherwise an error wrapping ErrPublish and the last error.
func (p *Publisher) publish(ctx context.Context, m *nats.Msg, id string) error {
	start := time.Now()
	log := p.log.With().Str("subject", m.Subject).Str("msg_id", id).Str("reservation", m.Header.Get(messages.HeaderReservation)).Logger()
	var opts []wait.Option
	if p.o.Attempts > 0 {
		opts = append(opts, wait.MaxAttempts(p.o.Attempts))
	}
	opts = append(opts, wait.Backoff(p.o.MaxBackoff), wait.Jitter(jitter))
	tries, lookedUp := 0, false
	err := wait.Retry(ctx, p.o.Budget, p.o.Backoff, func(ctx context.Context) error {
		tries++
		err := p.try(ctx, m, id, &lookedUp)
		switch {
		case err == nil:
			if tries > 1 {
				log.Info().Int("tries", tries).Dur("took", time.Since(start)).Msg("published after retries")
			}
		case tries == 1:
			log.Warn().Err(err).Msg("publish failed, retrying")
		default:
			log.Debug().Err(err).Int("try", tries).Msg("publish failed again")
		}
		return err
	}, opts...)
	if err == nil {
		return nil
	}
	err = fmt.Errorf("%w: %s (id %s) after %d tries in %s: %w", ErrPublish, m.Subject, id, tries, time.Since(start).Round(time.Millisecond), err)
	p.mu.Lock()
	async, at := p.lastAsync, p.lastAt
	p.mu.Unlock()
	if async != nil && time.Since(at) < time.Minute && !errors.Is(err, nats.ErrPermissionViolation) {
		err = fmt.Errorf("%w (recent asynchronous error, e.g. a denied publish: %v)", err, async)
	}
	return err
}

// try publishes m once, bounded by Timeout, and classifies its error: nil, a
// transient error, or wait.Permanent(ErrRejected...). A permission violation for m's
// subject reported on the connection (WatchAsyncErrors) ends the try at once.
func (p *Publisher) try(ctx context.Context, m *nats.Msg, id string, lookedUp *bool) error {
	start := time.Now()
	cctx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	tctx, cancel := context.WithTimeoutCause(cctx, p.o.Timeout, errTryTimeout)
	defer cancel()
	if p.watching.Load() {
		go p.abortOnDenial(tctx, m.Subject, start, abort)
	}
	_, err := p.js.PublishMsg(tctx, m, jetstream.WithMsgID(id))
	if err == nil {
		return nil
	}
	if d := p.deniedSince(m.Subject, start); d != nil {
		return wait.Permanent(fmt.Errorf("%w: %w", ErrRejected, d))
	}
	if ctx.Err() != nil {
		return err // the caller's context or the budget ended: the retry reports it
	}
	if errors.Is(context.Cause(tctx), errTryTimeout) {
		return fmt.Errorf("no acknowledgement within %s: %w", p.o.Timeout, err)
	}
	return p.classify(ctx, m.Subject, err, lookedUp)
}

// classify returns err as it is when a retry may succeed, and
// wait.Permanent(ErrRejected...) when none can.
func (p *Publisher) classify(ctx context.Context, subject string, err error, lookedUp *bool) error {
	reject := func(why string) error { return wait.Permanent(fmt.Errorf("%w: %s: %w", ErrRejected, why, err)) }
	var api *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return reject("message too large")
	case errors.Is(err, nats.ErrBadSubject), errors.Is(err, nats.ErrHeadersNotSupported), errors.Is(err, nats.ErrInvalidMsg):
		return reject("message not publishable")
	case errors.Is(err, nats.ErrPermissionViolation), errors.Is(err, nats.ErrAuthorization):
		return reject("not allowed")
	case errors.Is(err, nats.ErrConnectionDraining):
		return reject("connection draining")
	case errors.Is(err, nats.ErrConnectionClosed):
		if nc := p.js.Conn(); nc != nil && nc.IsClosed() {
			return reject("connection closed for good") // a nats.Conn never reopens
		}
		return err
	case errors.As(err, &api):
		// 503: JetStream temporarily unavailable, not enabled yet, store full for now.
		// 4xx: message too large, wrong expected stream or sequence, sealed stream.
		if api.Code >= 500 || api.Code == 0 {
			return err
		}
		return reject(fmt.Sprintf("refused by JetStream (%d/%d)", api.Code, api.ErrorCode))
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
		// Nobody answered: a stream without a leader (election, restart) or no stream
		// for the subject at all. Ask once per publish which it is; the meta leader
		// knows the stream even while the stream has no leader.
		if *lookedUp {
			return err
		}
		*lookedUp = true
		lctx, cancel := context.WithTimeout(ctx, p.o.Timeout)
		defer cancel()
		if _, lerr := p.js.StreamNameBySubject(lctx, subject); errors.Is(lerr, jetstream.ErrStreamNotFound) {
			return reject("no stream takes subject " + subject)
		}
		return err
	default:
		// Timeouts, a publish while reconnecting (ErrReconnectBufExceeded), and
		// anything unknown: retried within the budget.
		return err
	}
}

// deniedRe finds the subject of a publish permission violation, as the server words it.
var deniedRe = regexp.MustCompile(`Publish to "([^"]+)"`)

// deniedSubject reports the subject of err if err is a publish permission violation.
func deniedSubject(err error) (string, bool) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return "", false
	}
	m := deniedRe.FindStringSubmatch(err.Error())
	if m == nil {
		return "", false
	}
	return m[1], true
}

// deniedMemory is how long a permission violation is remembered.
const deniedMemory = time.Minute

// noteDenied records a permission violation for subject and wakes tries waiting on
// it. The caller holds p.mu.
func (p *Publisher) noteDenied(subject string, at time.Time) {
	for s, t := range p.denied {
		if at.Sub(t) > deniedMemory {
			delete(p.denied, s)
		}
	}
	p.denied[subject] = at
	close(p.deniedSig)
	p.deniedSig = make(chan struct{})
}

// deniedSince returns the permission violation for subject reported since t, or nil.
func (p *Publisher) deniedSince(subject string, t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if at, ok := p.denied[subject]; ok && !at.Before(t) {
		return fmt.Errorf("%w: publish to %q denied (reported %s)", nats.ErrPermissionViolation, subject, at.Format(time.RFC3339Nano))
	}
	return nil
}

// abortOnDenial ends a try (abort) as soon as a permission violation for subject is
// reported, until ctx ends.
func (p *Publisher) abortOnDenial(ctx context.Context, subject string, since time.Time, abort context.CancelCauseFunc) {
	for {
		p.mu.Lock()
		sig := p.deniedSig
		p.mu.Unlock()
		if err := p.deniedSince(subject, since); err != nil {
			abort(err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
	}
}
