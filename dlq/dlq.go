// Package dlq lists, shows and re-drives dead letters: requests a worker could not
// process (invalid, or out of deliveries), kept in VCL_DEADLETTERS with the reason in
// their headers. Nothing is dropped: a dead letter leaves the stream only when an
// operator re-drives (or deletes) it.
package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/messages"
)

// ErrNotFound is returned for a sequence that holds no dead letter.
var ErrNotFound = errors.New("dead letter not found")

// Entry is one dead letter.
type Entry struct {
	Seq             uint64    `json:"seq"`
	Subject         string    `json:"subject"`
	Reason          string    `json:"reason"`
	OriginalSubject string    `json:"original_subject"`
	OriginalSeq     uint64    `json:"original_seq,omitempty"`
	Deliveries      int       `json:"deliveries,omitempty"`
	Reservation     int64     `json:"reservation,omitempty"`
	Worker          string    `json:"worker,omitempty"`
	Time            time.Time `json:"time"`
	Size            int       `json:"size"`
	Payload         []byte    `json:"payload,omitempty"`
}

// Store reads and re-drives dead letters.
type Store struct {
	js     jetstream.JetStream
	stream jetstream.Stream
}

// Open binds to the dead-letter stream.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	s, err := js.Stream(ctx, messages.StreamDeadLetters)
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w", messages.StreamDeadLetters, err)
	}
	return &Store{js: js, stream: s}, nil
}

// maxList bounds one listing.
const maxList = 10000

// List returns up to limit dead letters (all, up to 10000, when limit <= 0), oldest
// first, without their payloads.
func (s *Store) List(ctx context.Context, limit int) ([]Entry, error) {
	if limit <= 0 || limit > maxList {
		limit = maxList
	}
	info, err := s.stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	var out []Entry
	seq := info.State.FirstSeq
	for len(out) < limit && seq != 0 && seq <= info.State.LastSeq {
		m, err := s.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(messages.SubjectDeadLetterAll))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dead letter after %d: %w", seq, err)
		}
		e := entryOf(m)
		e.Payload = nil
		out = append(out, e)
		seq = m.Sequence + 1
	}
	return out, nil
}

// Show returns one dead letter with its payload.
func (s *Store) Show(ctx context.Context, seq uint64) (Entry, error) {
	m, err := s.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Entry{}, fmt.Errorf("dead letter %d: %w", seq, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	return entryOf(m), nil
}

// Replay re-publishes dead letter seq to its original subject, as a new request
// (Nats-Msg-Id "replay-<seq>", so replaying twice within the duplicate window queues
// it once), then deletes the dead letter. It returns the request's new sequence. An
// event the bridge parked goes back to its event subject (vcl.events.*.<reservation>)
// with Vclq-Original-Sequence, and the bridge applies it (once: vclq_applied).
func (s *Store) Replay(ctx context.Context, seq uint64) (uint64, error) {
	e, err := s.Show(ctx, seq)
	if err != nil {
		return 0, err
	}
	var msg *nats.Msg
	if strings.HasPrefix(e.OriginalSubject, messages.SubjectLoadlogPrefix) || strings.HasPrefix(e.OriginalSubject, messages.SubjectResultPrefix) {
		// An event the bridge parked: back to its event subject, with its original
		// sequence, so the bridge applies it in its place among its reservation's events.
		if e.OriginalSeq == 0 {
			return 0, fmt.Errorf("dead letter %d: parked event without its original sequence", seq)
		}
		msg = nats.NewMsg(e.OriginalSubject)
		msg.Header.Set(messages.HeaderOrigSequence, strconv.FormatUint(e.OriginalSeq, 10))
	} else {
		kind, ok := messages.KindFromSubject(e.OriginalSubject)
		if !ok {
			return 0, fmt.Errorf("dead letter %d: original subject %q is not a request or event subject", seq, e.OriginalSubject)
		}
		msg = nats.NewMsg(kind.Subject())
		msg.Header.Set(messages.HeaderKind, string(kind))
	}
	msg.Data = e.Payload
	msg.Header.Set(messages.HeaderMsgID, "replay-"+strconv.FormatUint(seq, 10))
	if e.Reservation > 0 {
		msg.Header.Set(messages.HeaderReservation, strconv.FormatInt(e.Reservation, 10))
	}
	ack, err := s.js.PublishMsg(ctx, msg)
	if err != nil {
		return 0, fmt.Errorf("replay dead letter %d to %s: %w", seq, msg.Subject, err)
	}
	if err := s.stream.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return ack.Sequence, fmt.Errorf("replayed dead letter %d as request %d, but could not delete it: %w", seq, ack.Sequence, err)
	}
	return ack.Sequence, nil
}

func entryOf(m *jetstream.RawStreamMsg) Entry {
	h := m.Header
	e := Entry{
		Seq:             m.Sequence,
		Subject:         m.Subject,
		Reason:          h.Get(messages.HeaderReason),
		OriginalSubject: h.Get(messages.HeaderOrigSubject),
		Worker:          h.Get(messages.HeaderWorker),
		Time:            m.Time,
		Size:            len(m.Data),
		Payload:         m.Data,
	}
	e.OriginalSeq, _ = strconv.ParseUint(h.Get(messages.HeaderOrigSequence), 10, 64)
	e.Deliveries, _ = strconv.Atoi(h.Get(messages.HeaderDeliveries))
	e.Reservation, _ = strconv.ParseInt(h.Get(messages.HeaderReservation), 10, 64)
	if e.Reservation == 0 {
		e.Reservation = messages.HintFrom(m.Data).ReservationID
	}
	return e
}
