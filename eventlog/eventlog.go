// Package eventlog replays and follows vclq's events (loadlog and result) from
// VCL_EVENTS, for `vclq events`, `vclq watch` and tests.
package eventlog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
)

// Event is one stored event, decoded.
type Event struct {
	Seq     uint64            `json:"seq"`
	Subject string            `json:"subject"`
	Time    time.Time         `json:"time"`
	Loadlog *messages.Loadlog `json:"loadlog,omitempty"`
	Result  *messages.Result  `json:"result,omitempty"`
	// Late marks a loadlog event stored after a result of its reservation for the
	// same or a newer request: a fenced-out job's, ignored by every reader
	// (messages.IsLate). Only results read in the same Read are known.
	Late bool `json:"late,omitempty"`
	// Err is set when the payload did not decode; Raw holds it then.
	Err string `json:"error,omitempty"`
	Raw []byte `json:"raw,omitempty"`
}

// Filter selects events.
type Filter struct {
	// Reservation limits to one reservation (0: all).
	Reservation int64
	// Type is "loadlog", "result" or "" for both.
	Type string
	// Follow keeps reading new events until ctx ends; otherwise Read returns once it
	// has delivered every event stored when it started.
	Follow bool
	// IdleTimeout bounds a non-follow read that stops receiving. default: 5s.
	IdleTimeout time.Duration
	// Last, when set, starts from the stream's last Last messages instead of the
	// first (bounding a read over a long history).
	Last uint64
	// After, when set, starts after this stream sequence (resuming a read that
	// stopped there); it takes precedence over Last.
	After uint64
}

// Subject is the filter subject for f.
func (f Filter) Subject() (string, error) {
	typ := "*"
	switch f.Type {
	case "", "*":
	case "loadlog", "result":
		typ = f.Type
	default:
		return "", fmt.Errorf("event type %q is not loadlog or result", f.Type)
	}
	res := ">"
	if f.Reservation > 0 {
		res = strconv.FormatInt(f.Reservation, 10)
	} else if typ == "*" {
		return messages.SubjectEventsAll, nil
	}
	return "vcl.events." + typ + "." + res, nil
}

// ErrStop may be returned by the callback to end Read without an error.
var ErrStop = errors.New("stop reading events")

// Read delivers matching events in stream order to fn.
func Read(ctx context.Context, js jetstream.JetStream, f Filter, fn func(Event) error) error {
	subject, err := f.Subject()
	if err != nil {
		return err
	}
	if f.IdleTimeout <= 0 {
		f.IdleTimeout = 5 * time.Second
	}
	var stream jetstream.Stream
	err = settling(ctx, func(ctx context.Context) (err error) {
		stream, err = js.Stream(ctx, messages.StreamEvents)
		return err
	})
	if err != nil {
		return fmt.Errorf("event stream %s: %w", messages.StreamEvents, err)
	}
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}}
	switch {
	case f.After > 0:
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, f.After+1
	case f.Last > 0:
		info, err := stream.Info(ctx)
		if err != nil {
			return fmt.Errorf("event stream %s: %w", messages.StreamEvents, err)
		}
		start := uint64(1)
		if info.State.LastSeq > f.Last {
			start = info.State.LastSeq - f.Last + 1
		}
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
	}
	var cons jetstream.Consumer
	err = settling(ctx, func(ctx context.Context) (err error) {
		cons, err = stream.OrderedConsumer(ctx, occ)
		return err
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", subject, err)
	}
	if !f.Follow {
		var info *jetstream.ConsumerInfo
		err := settling(ctx, func(ctx context.Context) (err error) {
			info, err = cons.Info(ctx)
			return err
		})
		if err != nil {
			return fmt.Errorf("read %s: %w", subject, err)
		}
		if info.NumPending == 0 {
			return nil
		}
	}
	var late messages.LateTracker
	for {
		wait := f.IdleTimeout
		if f.Follow {
			wait = 30 * time.Second
		}
		nctx, ncancel := context.WithTimeout(ctx, wait)
		msg, err := cons.Next(jetstream.FetchContext(nctx))
		ncancel()
		if ctx.Err() != nil {
			if f.Follow {
				return nil
			}
			return ctx.Err()
		}
		if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			if f.Follow {
				continue
			}
			return fmt.Errorf("read %s: no event for %s before the stored ones were read", subject, wait)
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", subject, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("read %s: %w", subject, err)
		}
		ev := Decode(msg.Subject(), msg.Data())
		ev.Late = late.Observe(ev.Loadlog, ev.Result)
		ev.Seq = meta.Sequence.Stream
		ev.Time = meta.Timestamp
		if err := fn(ev); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
		if !f.Follow && meta.NumPending == 0 {
			return nil
		}
	}
}

// settleBudget bounds the retries of a call that meets a cluster still settling.
const settleBudget = 15 * time.Second

// settling retries op while it fails with no responders or a timeout, as a request to
// a consumer that was just created on another server of a cluster, or during an
// election, does; other errors end it at once.
func settling(ctx context.Context, op func(ctx context.Context) error) error {
	return wait.Retry(ctx, settleBudget, 100*time.Millisecond, func(ctx context.Context) error {
		err := op(ctx)
		if err != nil && !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return wait.Permanent(err)
		}
		return err
	}, wait.Backoff(2*time.Second), wait.Jitter(0.2))
}

// Decode turns a stored payload into an Event by its subject.
func Decode(subject string, data []byte) Event {
	ev := Event{Subject: subject}
	var err error
	switch {
	case strings.HasPrefix(subject, messages.SubjectLoadlogPrefix):
		ev.Loadlog, err = messages.DecodeLoadlog(data)
	case strings.HasPrefix(subject, messages.SubjectResultPrefix):
		ev.Result, err = messages.DecodeResult(data)
	default:
		err = fmt.Errorf("subject %q is not an event subject", subject)
	}
	if err != nil {
		ev.Err, ev.Raw, ev.Loadlog, ev.Result = err.Error(), data, nil, nil
	}
	return ev
}
