package messages

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// MaxMessageSize bounds every request and event payload.
const MaxMessageSize = 64 * 1024

// DecodeRequest decodes and validates a request payload strictly: at most
// MaxMessageSize bytes, exactly one JSON object, schema SchemaVersion, every key spelt
// exactly as documented (no unknown, duplicate or case-folded key), every required
// field present, no null, every value of its JSON type and valid. Every error wraps
// ErrInvalid.
func DecodeRequest(data []byte) (*Request, error) {
	var r Request
	if err := decodeStrict(data, &r, requestShape); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// DecodeLoadlog strictly decodes and validates a loadlog event (same rules as
// DecodeRequest). On error it returns nil.
func DecodeLoadlog(data []byte) (*Loadlog, error) {
	var l Loadlog
	if err := decodeStrict(data, &l, loadlogShape); err != nil {
		return nil, err
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return &l, nil
}

// DecodeResult strictly decodes and validates a result event (same rules as
// DecodeRequest). On error it returns nil.
func DecodeResult(data []byte) (*Result, error) {
	var r Result
	if err := decodeStrict(data, &r, resultShape); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Hint is what can be read from a payload that failed to decode, so that its rejection
// reaches the right reservation's events. Zero values mean unknown.
type Hint struct {
	Kind          Kind
	ReservationID int64
	RequestID     int64
	ComputerID    int64
}

// HintFrom reads what it can from a payload that may be invalid. It never fails.
func HintFrom(data []byte) Hint {
	var h Hint
	if len(data) > MaxMessageSize {
		return h
	}
	var probe struct {
		Kind        any              `json:"kind"`
		Request     struct{ ID any } `json:"request"`
		Reservation struct{ ID any } `json:"reservation"`
		Computer    struct{ ID any } `json:"computer"`
	}
	_ = json.Unmarshal(data, &probe)
	if s, ok := probe.Kind.(string); ok && Kind(s).Valid() {
		h.Kind = Kind(s)
	}
	h.ReservationID = positiveID(probe.Reservation.ID)
	h.RequestID = positiveID(probe.Request.ID)
	h.ComputerID = positiveID(probe.Computer.ID)
	return h
}

func positiveID(v any) int64 {
	f, ok := v.(float64)
	if !ok || f < 1 || f > maxID || f != float64(int64(f)) {
		return 0
	}
	return int64(f)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// loadstateNames are VCL's computerloadstate.loadstatename values (states.go).
var loadstateNames = map[string]bool{
	LoadBegin: true, LoadStatusCheck: true, LoadImageBlade: true, LoadInfo: true,
	LoadDoesImageExist: true, LoadCopyFromPartnerMN: true, LoadStartLoad: true,
	LoadTransferVM: true, LoadVMSetupConfig: true, LoadStartVM: true,
	LoadMachineBooted: true, LoadDynamicDHCPAddress: true, LoadStaticIPAddress: true,
	LoadImageComplete: true, LoadAddingUser: true, LoadNodeReady: true, LoadExited: true,
	LoadReserved: true, LoadAcknowledgeTimeout: true, LoadNoInitialConnect: true,
	LoadPostReserve: true, LoadConnected: true, LoadFailed: true, LoadImageFailed: true,
	LoadTimeout: true, LoadDeleted: true, LoadWarning: true,
}

// ValidLoadstateName reports whether s is one of VCL's computerloadstate names (the
// Load* constants). Detail goes in a loadlog's info, never in a new name.
func ValidLoadstateName(s string) bool { return loadstateNames[s] }

// Bounds of event fields.
const (
	maxStep       = 1000
	maxDeliveries = 1 << 20
)

// Validate checks a loadlog event.
func (l *Loadlog) Validate() error {
	var v validator
	if l.Schema != SchemaVersion {
		v.addf("schema: %d is not %d", l.Schema, SchemaVersion)
	}
	v.id("reservation_id", l.ReservationID)
	v.rangeInt("request_id", l.RequestID, 0, maxID)
	v.rangeInt("computer_id", l.ComputerID, 0, maxID)
	if !l.Kind.Valid() {
		v.addf("kind: %q is not a request kind", l.Kind)
	}
	if !ValidLoadstateName(l.Name) {
		v.addf("name: %q is not a VCL loadstate name", l.Name)
	}
	switch l.Phase {
	case PhaseBegin, PhaseEnd, PhaseFail, PhaseInfo:
	default:
		v.addf("phase: %q is not begin, end, fail or info", l.Phase)
	}
	v.rangeInt("step", int64(l.Step), 0, maxStep)
	v.text("info", l.Info)
	v.rangeInt("duration_ms", l.DurationMS, 0, maxID)
	if l.Time.IsZero() {
		v.addf("time: required")
	}
	v.check("worker", ValidWorker(l.Worker))
	if l.RequestSeq > maxID {
		v.addf("request_seq: %d is more than %d", l.RequestSeq, int64(maxID))
	}
	return v.err()
}

// Validate checks a result event. A rejected result (a request that could not be
// decoded) may have reservation 0 and an empty kind and states: they were unknown.
func (r *Result) Validate() error {
	var v validator
	if r.Schema != SchemaVersion {
		v.addf("schema: %d is not %d", r.Schema, SchemaVersion)
	}
	v.rangeInt("request_id", r.RequestID, 0, maxID)
	v.rangeInt("computer_id", r.ComputerID, 0, maxID)
	switch r.Outcome {
	case OutcomeSuccess, OutcomeFailed, OutcomeRejected:
	default:
		v.addf("outcome: %q is not success, failed or rejected", r.Outcome)
	}
	if r.Outcome == OutcomeRejected {
		v.rangeInt("reservation_id", r.ReservationID, 0, maxID)
		if r.Kind != "" && !r.Kind.Valid() {
			v.addf("kind: %q is not empty or a request kind", r.Kind)
		}
		if r.RequestState != "" && !ValidState(r.RequestState) {
			v.addf("request_state: %q is not empty or a VCL state", r.RequestState)
		}
		if r.ComputerState != "" && !ValidState(r.ComputerState) {
			v.addf("computer_state: %q is not empty or a VCL state", r.ComputerState)
		}
	} else {
		v.id("reservation_id", r.ReservationID)
		if !r.Kind.Valid() {
			v.addf("kind: %q is not a request kind", r.Kind)
		}
		if !ValidState(r.RequestState) {
			v.addf("request_state: %q is not a VCL state", r.RequestState)
		}
		// A failed result may leave the computer as it is (a superseded request: the
		// slot serves a newer one).
		if !ValidState(r.ComputerState) && (r.Outcome != OutcomeFailed || r.ComputerState != "") {
			v.addf("computer_state: %q is not a VCL state", r.ComputerState)
		}
	}
	if r.Outcome != OutcomeSuccess && r.Error == "" {
		v.addf("error: required when the outcome is %s", r.Outcome)
	}
	v.optional("error_code", r.ErrorCode, func(s string) error {
		if !errorCodeRe.MatchString(s) {
			return fmt.Errorf("%q is not 1-64 characters of [A-Za-z0-9_.:-]", s)
		}
		return nil
	})
	v.text("error", r.Error)
	v.optional("ip", r.IP, ValidIP)
	v.rangeInt("image_id", r.ImageID, 0, maxID)
	v.rangeInt("image_revision_id", r.ImageRevisionID, 0, maxID)
	v.rangeInt("image_size_mb", r.ImageSizeMB, 0, maxID)
	if r.NewImage != nil {
		v.targetImage("new_image", *r.NewImage)
	}
	if len(r.Passwords) > MaxUsers {
		v.addf("passwords: %d, more than %d", len(r.Passwords), MaxUsers)
	}
	for i, p := range r.Passwords {
		v.id(fmt.Sprintf("passwords[%d].user_id", i), p.UserID)
		v.check(fmt.Sprintf("passwords[%d].login", i), ValidUsername(p.Login))
		if !sealedRe.MatchString(p.Sealed) || len(p.Sealed) < 4 || len(p.Sealed) > 1024 {
			v.addf("passwords[%d].sealed: not standard base64 of 4-1024 characters", i)
		} else if _, err := base64.StdEncoding.Strict().DecodeString(p.Sealed); err != nil {
			v.addf("passwords[%d].sealed: %v", i, err)
		}
	}
	v.check("worker", ValidWorker(r.Worker))
	if r.Time.IsZero() {
		v.addf("time: required")
	}
	v.rangeInt("deliveries", int64(r.Deliveries), 0, maxDeliveries)
	if r.RequestSeq > maxID {
		v.addf("request_seq: %d is more than %d", r.RequestSeq, int64(maxID))
	}
	return v.err()
}
