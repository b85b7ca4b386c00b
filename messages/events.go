package messages

import (
	"fmt"
	"hash/fnv"
	"time"
)

// Phase tells where in a step a loadlog event was taken.
type Phase string

// Loadlog phases. The bridge writes a computerloadlog row for each Begin (and for
// Info), the moment VCL writes its row; End and Fail carry durations and errors.
const (
	PhaseBegin Phase = "begin"
	PhaseEnd   Phase = "end"
	PhaseFail  Phase = "fail"
	PhaseInfo  Phase = "info"
)

// Loadlog is one progress event of a reservation, on vcl.events.loadlog.<reservation>.
type Loadlog struct {
	Schema        int       `json:"schema"`
	ReservationID int64     `json:"reservation_id"`
	RequestID     int64     `json:"request_id"`
	ComputerID    int64     `json:"computer_id"`
	Kind          Kind      `json:"kind"`
	Name          string    `json:"name"` // a computerloadstate.loadstatename
	Phase         Phase     `json:"phase"`
	Step          int       `json:"step"` // position of the step in its flow, from 1
	Info          string    `json:"info,omitempty"`
	DurationMS    int64     `json:"duration_ms,omitempty"` // End and Fail
	Time          time.Time `json:"time"`
	Worker        string    `json:"worker"`
	// RequestSeq is the request's sequence in VCL_REQUESTS: one delivery outcome.
	RequestSeq uint64 `json:"request_seq"`
}

// MsgID is the dedup id: a retried publish or a redelivered request that re-runs the
// same step produces the same id, so the event is stored once. Info events also carry
// a hash of their text, so that several info events of one step are all kept.
func (l *Loadlog) MsgID() string {
	id := fmt.Sprintf("loadlog-%d-%d-%d-%s-%s", l.ReservationID, l.RequestSeq, l.Step, l.Name, l.Phase)
	if l.Phase == PhaseInfo {
		h := fnv.New64a()
		h.Write([]byte(l.Info))
		id += fmt.Sprintf("-%016x", h.Sum64())
	}
	return id
}

// Outcome of a request.
type Outcome string

// Outcomes.
const (
	OutcomeSuccess  Outcome = "success"
	OutcomeFailed   Outcome = "failed"
	OutcomeRejected Outcome = "rejected"
)

// Result is the one final event of a request's delivery outcome, on
// vcl.events.result.<reservation>.
type Result struct {
	Schema        int     `json:"schema"`
	ReservationID int64   `json:"reservation_id"`
	RequestID     int64   `json:"request_id"`
	ComputerID    int64   `json:"computer_id"`
	Kind          Kind    `json:"kind"`
	Outcome       Outcome `json:"outcome"`
	// RequestState and ComputerState are the next states in VCL's vocabulary
	// (state_exit): the bridge writes them as they are.
	RequestState  string `json:"request_state"`
	ComputerState string `json:"computer_state"`
	ErrorCode     string `json:"error_code,omitempty"`
	Error         string `json:"error,omitempty"`

	// What the state produced.
	IP              string           `json:"ip,omitempty"`
	ImageID         int64            `json:"image_id,omitempty"`          // computer.currentimageid after a load
	ImageRevisionID int64            `json:"image_revision_id,omitempty"` // computer.imagerevisionid after a load
	ImageSizeMB     int64            `json:"image_size_mb,omitempty"`     // image.size after a capture
	NewImage        *TargetImage     `json:"new_image,omitempty"`         // the revision a capture created
	Passwords       []SealedPassword `json:"passwords,omitempty"`

	Worker     string    `json:"worker"`
	Time       time.Time `json:"time"`
	Deliveries int       `json:"deliveries"`
	RequestSeq uint64    `json:"request_seq"`
}

// MsgID is the dedup id: one result per request delivery outcome.
func (r *Result) MsgID() string {
	return fmt.Sprintf("result-%d-%d", r.ReservationID, r.RequestSeq)
}

// SealedPassword is a user's password sealed for the bridge: an anonymous NaCl box
// (golang.org/x/crypto/nacl/box.SealAnonymous) to the bridge's public key, base64.
// Nothing on a stream or in a log holds a password in clear.
type SealedPassword struct {
	UserID int64  `json:"user_id"`
	Login  string `json:"login"`
	Sealed string `json:"sealed"`
}

// Late loadlog events.
//
// A job stores all of a request's loadlog events before its result, so a loadlog
// event stored after a result of the same reservation whose request sequence is not
// lower than the event's comes from a job that had been fenced out (a node that lost
// its slot lease during a pause, say, and published in the moment before it noticed).
// Such an event is late: every reader ignores it (the bridge writes no row for it,
// `vclq watch` does not show it, `vclq events` marks it).

// IsLate reports whether l is late after a result for request sequence resultSeq of
// its reservation was stored before it.
func IsLate(l *Loadlog, resultSeq uint64) bool { return l.RequestSeq <= resultSeq }

// LateTracker tells late loadlog events while reading events in stream order. It
// remembers the newest result per reservation, for at most lateTrackerMax
// reservations (the oldest are forgotten first). The zero value is ready to use.
type LateTracker struct {
	floor map[int64]uint64
	order []int64
}

const lateTrackerMax = 100000

// Observe takes the next event in stream order (a loadlog or a result) and reports
// whether it is a late loadlog event.
func (t *LateTracker) Observe(l *Loadlog, r *Result) bool {
	if t.floor == nil {
		t.floor = map[int64]uint64{}
	}
	switch {
	case r != nil:
		old, seen := t.floor[r.ReservationID]
		if !seen {
			if len(t.order) >= lateTrackerMax {
				delete(t.floor, t.order[0])
				t.order = t.order[1:]
			}
			t.order = append(t.order, r.ReservationID)
		}
		t.floor[r.ReservationID] = max(old, r.RequestSeq)
	case l != nil:
		if seq, ok := t.floor[l.ReservationID]; ok {
			return IsLate(l, seq)
		}
	}
	return false
}
