package messages

import (
	"strconv"
	"strings"
)

// SchemaVersion is the only schema version this build reads and writes.
const SchemaVersion = 1

// Kind is a request kind; each has its own subject.
type Kind string

// The request kinds (VCL_REFERENCE.md §2).
const (
	KindNew      Kind = "new"
	KindReload   Kind = "reload"
	KindReclaim  Kind = "reclaim"
	KindImage    Kind = "image"
	KindReserved Kind = "reserved"
)

// Kinds lists every request kind in a stable order.
var Kinds = []Kind{KindNew, KindReload, KindReclaim, KindImage, KindReserved}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool {
	for _, x := range Kinds {
		if k == x {
			return true
		}
	}
	return false
}

// Subject is the request subject of the kind, e.g. "vcl.new".
func (k Kind) Subject() string { return SubjectPrefix + "." + string(k) }

// Subjects, streams, consumers and buckets: every name other programs rely on.
const (
	SubjectPrefix = "vcl"

	// StreamRequests holds requests on vcl.<kind>: work-queue retention.
	StreamRequests = "VCL_REQUESTS"
	// StreamEvents holds loadlog and result events: limits retention, replayable.
	StreamEvents = "VCL_EVENTS"
	// StreamDeadLetters holds requests that could not be processed, with the reason in
	// headers, under vcl.dlq.<kind>.<reservation>.
	StreamDeadLetters = "VCL_DEADLETTERS"
	// StreamAdvisories captures JetStream's max-deliveries and terminated advisories
	// for the request stream, so that a request abandoned by a crashed worker on its
	// last delivery still reaches the dead letters.
	StreamAdvisories = "VCL_ADVISORIES"

	// ConsumerWorkers is the one shared durable pull consumer of the workers.
	ConsumerWorkers = "vclq-workers"
	// ConsumerDeadLetterSweeper reads StreamAdvisories.
	ConsumerDeadLetterSweeper = "vclq-dlq-sweeper"
	// ConsumerBridge is the bridge's durable consumer on StreamEvents.
	ConsumerBridge = "vclq-bridge"

	// BucketSlotLeases holds one key per VM slot while a pipeline runs on it.
	BucketSlotLeases = "vclq_slots"
	// BucketWorkers is the worker registry (heartbeats) behind `vclq status`.
	BucketWorkers = "vclq_workers"
	// BucketHostKeys holds each slot's SSH host key as the management node that last
	// loaded it recorded it, shared by all nodes (sharedkeys).
	BucketHostKeys = "vclq_hostkeys"

	SubjectEventsAll        = "vcl.events.>"
	SubjectLoadlogPrefix    = "vcl.events.loadlog."
	SubjectResultPrefix     = "vcl.events.result."
	SubjectDeadLetterAll    = "vcl.dlq.>"
	SubjectDeadLetterPrefix = "vcl.dlq."

	// Advisory subjects for the request stream (any consumer).
	SubjectAdvisoryMaxDeliveries = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + StreamRequests + ".*"
	SubjectAdvisoryTerminated    = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED." + StreamRequests + ".*"
)

// Header names set on requests and events.
const (
	HeaderMsgID        = "Nats-Msg-Id"
	HeaderReservation  = "Vclq-Reservation"
	HeaderRequest      = "Vclq-Request"
	HeaderKind         = "Vclq-Kind"
	HeaderState        = "Vclq-State"
	HeaderWorker       = "Vclq-Worker"
	HeaderReason       = "Vclq-Reason"
	HeaderOrigSubject  = "Vclq-Original-Subject"
	HeaderOrigSequence = "Vclq-Original-Sequence"
	HeaderDeliveries   = "Vclq-Deliveries"
	HeaderDeadLetterAt = "Vclq-Dead-Letter-Time"
)

// RequestSubjects lists every request subject.
func RequestSubjects() []string {
	s := make([]string, len(Kinds))
	for i, k := range Kinds {
		s[i] = k.Subject()
	}
	return s
}

// KindFromSubject returns the kind of a request subject such as "vcl.new".
func KindFromSubject(subject string) (Kind, bool) {
	rest, ok := strings.CutPrefix(subject, SubjectPrefix+".")
	if !ok {
		return "", false
	}
	k := Kind(rest)
	return k, k.Valid()
}

// LoadlogSubject is vcl.events.loadlog.<reservation>.
func LoadlogSubject(reservation int64) string {
	return SubjectLoadlogPrefix + strconv.FormatInt(reservation, 10)
}

// ResultSubject is vcl.events.result.<reservation>. Reservation 0 is used for a
// rejected message whose reservation id could not be read.
func ResultSubject(reservation int64) string {
	return SubjectResultPrefix + strconv.FormatInt(reservation, 10)
}

// ReservationEventsSubject filters every event of one reservation:
// vcl.events.*.<reservation>.
func ReservationEventsSubject(reservation int64) string {
	return "vcl.events.*." + strconv.FormatInt(reservation, 10)
}

// DeadLetterSubject is vcl.dlq.<kind>.<reservation> ("unknown" for an unreadable kind).
func DeadLetterSubject(kind Kind, reservation int64) string {
	k := string(kind)
	if !kind.Valid() {
		k = "unknown"
	}
	return SubjectDeadLetterPrefix + k + "." + strconv.FormatInt(reservation, 10)
}

// SlotLeaseKey is the KV key of a VM slot's lease: "computer.<id>".
func SlotLeaseKey(computerID int64) string {
	return "computer." + strconv.FormatInt(computerID, 10)
}

// SubjectControlCancelPrefix starts the core NATS (not stored) subjects on which a
// worker asks every worker to cancel a reservation's earlier jobs:
// vclq.control.cancel.<reservation>.
const SubjectControlCancelPrefix = "vclq.control.cancel."

// ControlCancelSubject is vclq.control.cancel.<reservation>.
func ControlCancelSubject(reservation int64) string {
	return SubjectControlCancelPrefix + strconv.FormatInt(reservation, 10)
}
