package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/metrics"
	"github.com/vclq/vclq/publisher"
)

// advisory is the part of JetStream's max-deliveries and terminated advisories the
// sweeper reads.
type advisory struct {
	Type       string `json:"type"`
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries int    `json:"deliveries"`
}

const advisoryMaxDeliver = "io.nats.jetstream.advisory.v1.max_deliver"

// sweep consumes VCL_ADVISORIES through the shared sweeper consumer until ctx ends.
// A max-deliveries advisory for the workers' consumer whose request is still in
// VCL_REQUESTS (its last delivery was abandoned: crashed worker, slot busy, shutdown)
// is moved: dead letter, failed result, deleted from VCL_REQUESTS. Requests a worker
// already finished (terminated, dead-lettered) are gone from the stream and skipped.
func (p *Pool) sweep(ctx context.Context) {
	var cons jetstream.Consumer
	delay := 500 * time.Millisecond
	for cons == nil {
		c, err := p.js.Consumer(ctx, messages.StreamAdvisories, messages.ConsumerDeadLetterSweeper)
		if err == nil {
			cons = c
			break
		}
		if ctx.Err() != nil {
			return
		}
		p.log.Warn().Err(err).Msg("dead-letter sweeper: consumer not available, retrying")
		if wait.Sleep(ctx, delay) != nil {
			return
		}
		delay = min(2*delay, 30*time.Second)
	}
	for ctx.Err() == nil {
		batch, err := cons.Fetch(16, jetstream.FetchMaxWait(p.cfg.PollWait))
		if err != nil {
			if wait.Sleep(ctx, time.Second) != nil {
				return
			}
			continue
		}
		for m := range batch.Messages() {
			if err := p.sweepOne(context.WithoutCancel(ctx), m); err != nil {
				p.log.Warn().Err(err).Msg("dead-letter sweeper: will retry")
				_ = m.NakWithDelay(5 * time.Second)
				continue
			}
			_ = m.Ack()
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
			if wait.Sleep(ctx, time.Second) != nil {
				return
			}
		}
	}
}

func (p *Pool) sweepOne(ctx context.Context, m jetstream.Msg) error {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	var a advisory
	if err := json.Unmarshal(m.Data(), &a); err != nil {
		p.log.Warn().Err(err).Msg("dead-letter sweeper: unreadable advisory skipped")
		return nil
	}
	if a.Type != advisoryMaxDeliver || a.Stream != messages.StreamRequests || a.Consumer != messages.ConsumerWorkers {
		return nil // terminated: the worker that terminated it already handled it
	}
	raw, err := p.requests.GetMsg(ctx, a.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get request %d: %w", a.StreamSeq, err)
	}
	log := p.log.With().Uint64("seq", a.StreamSeq).Int("deliveries", a.Deliveries).Logger()
	var r messages.Result
	var dl publisher.DeadLetter
	req, derr := messages.DecodeRequest(raw.Data)
	reason := fmt.Sprintf("delivery budget exhausted (%d deliveries): the last delivery was abandoned (worker crashed, slot busy or shutdown)", a.Deliveries)
	if derr != nil {
		hint := messages.HintFrom(raw.Data)
		text := messages.CleanText(derr.Error(), messages.MaxInfoLen)
		r = p.rejected(hint, a.StreamSeq, a.Deliveries, text)
		dl = publisher.DeadLetter{Kind: hint.Kind, ReservationID: hint.ReservationID, RequestID: hint.RequestID, Reason: "rejected: " + text}
	} else {
		done, err := p.resultOf(ctx, req.Reservation.ID, a.StreamSeq)
		if err != nil {
			return fmt.Errorf("look up the result of request %d: %w", a.StreamSeq, err)
		}
		if done != nil {
			// Its result was stored but the acks were lost: nothing to move.
			log.Info().Int64("reservation", req.Reservation.ID).Msg("dead-letter sweeper: request already has a result; removed from the queue")
			if err := p.requests.DeleteMsg(ctx, a.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return fmt.Errorf("delete request %d: %w", a.StreamSeq, err)
			}
			return nil
		}
		r = messages.Result{
			Schema: messages.SchemaVersion, ReservationID: req.Reservation.ID, RequestID: req.Request.ID,
			ComputerID: req.Computer.ID, Kind: req.Kind, Outcome: messages.OutcomeFailed,
			RequestState: messages.StateFailed, ComputerState: messages.StateFailed,
			ErrorCode: CodeMaxDeliver, Error: reason, Worker: p.cfg.ID, Time: time.Now().UTC(),
			Deliveries: a.Deliveries, RequestSeq: a.StreamSeq,
		}
		dl = publisher.DeadLetter{Kind: req.Kind, ReservationID: req.Reservation.ID, RequestID: req.Request.ID, Reason: reason}
		rec, _, err := p.readSlotRecord(ctx, SlotServedKey(req.Computer.ID))
		if err != nil {
			return fmt.Errorf("read the slot record of request %d: %w", a.StreamSeq, err)
		}
		if rec.Seq > a.StreamSeq {
			// The slot serves a newer request: leave its computer alone.
			r.ComputerState = ""
		}
	}
	dl.Data, dl.Header, dl.Subject, dl.Seq, dl.Deliveries, dl.Worker = raw.Data, raw.Header, raw.Subject, a.StreamSeq, a.Deliveries, p.cfg.ID
	if err := p.pub.DeadLetter(ctx, dl); err != nil {
		return err
	}
	p.metrics().DeadLetter(metrics.DeadLetterSwept)
	if err := p.pub.Result(ctx, &r); err != nil {
		return err
	}
	p.metrics().Result(r.Kind, r.Outcome)
	if err := p.requests.DeleteMsg(ctx, a.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete request %d: %w", a.StreamSeq, err)
	}
	log.Warn().Int64("reservation", r.ReservationID).Msg("dead-letter sweeper: request moved to the dead letters")
	return nil
}
