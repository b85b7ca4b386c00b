package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Bridge event types (the type label).
const (
	EventLoadlog = "loadlog"
	EventResult  = "result"
)

// Database error classes (vclq_bridge_database_errors_total).
const (
	DBTransient = "transient" // retried: the connection, a lock wait, a server restart
	DBPermanent = "permanent" // a retry cannot help: bad data, the site's schema refuses it
)

// Poll outcomes (vclq_bridge_polls_total).
const (
	PollOK    = "ok"
	PollError = "error"
)

// Bridge holds a bridge process's metrics. All methods are safe on a nil *Bridge.
type Bridge struct {
	claimed    prometheus.Counter
	failed     prometheus.Counter
	polls      *prometheus.CounterVec
	applied    *prometheus.CounterVec
	terminated *prometheus.CounterVec
	lag        *prometheus.HistogramVec
	dbErrors   *prometheus.CounterVec

	checkedIn moment
}

// NewBridge registers a bridge's metrics on reg.
func NewBridge(reg prometheus.Registerer) (*Bridge, error) {
	const sub = "bridge"
	c, cv := subsystem(sub).counter, subsystem(sub).counterVec
	m := &Bridge{
		claimed:    c("rows_claimed_total", "Request rows claimed (their message published, the claim committed)."),
		failed:     c("rows_failed_total", "Request rows failed in the database because they cannot become a valid request."),
		polls:      cv("polls_total", "Polls of the request table, by outcome (ok, error).", "outcome"),
		applied:    cv("events_applied_total", "Events written to the database, by type (loadlog, result).", "type"),
		terminated: cv("events_terminated_total", "Events that could not be applied and were parked as dead letters (replayable), by type.", "type"),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub,
			Name: "apply_lag_seconds", Help: "Time from an event's storage in VCL_EVENTS to its commit in the database, by type.",
			Buckets: lagBuckets()}, []string{"type"}),
		dbErrors: cv("database_errors_total", "Database errors, by class (transient: retried; permanent: a retry cannot help).", "class"),
	}
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: sub, Name: "checkin_age_seconds",
		Help: "Seconds since the last successful check-in of the management nodes (managementnode.lastcheckin; -1: none yet)."}, m.checkedIn.age)
	if err := register(reg, m.claimed, m.failed, m.polls, m.applied, m.terminated, m.lag, m.dbErrors, age); err != nil {
		return nil, err
	}
	for _, t := range []string{EventLoadlog, EventResult} {
		m.applied.WithLabelValues(t)
		m.terminated.WithLabelValues(t)
		m.lag.WithLabelValues(t)
	}
	for _, cl := range []string{DBTransient, DBPermanent} {
		m.dbErrors.WithLabelValues(cl)
	}
	for _, o := range []string{PollOK, PollError} {
		m.polls.WithLabelValues(o)
	}
	return m, nil
}

// Polled counts a poll with the rows it claimed and failed; ok is false when it
// ended with an error.
func (m *Bridge) Polled(ok bool, claimed, failed int) {
	if m == nil {
		return
	}
	o := PollOK
	if !ok {
		o = PollError
	}
	m.polls.WithLabelValues(o).Inc()
	m.claimed.Add(float64(claimed))
	m.failed.Add(float64(failed))
}

// Applied counts an event committed to the database, stored in the event stream at
// stored (the zero time: lag unknown).
func (m *Bridge) Applied(typ string, stored time.Time) {
	if m == nil {
		return
	}
	typ = oneOf(typ, EventLoadlog, EventResult)
	m.applied.WithLabelValues(typ).Inc()
	if !stored.IsZero() {
		m.lag.WithLabelValues(typ).Observe(max(0, time.Since(stored).Seconds()))
	}
}

// Terminated counts an event that can never apply.
func (m *Bridge) Terminated(typ string) {
	if m != nil {
		m.terminated.WithLabelValues(oneOf(typ, EventLoadlog, EventResult)).Inc()
	}
}

// DatabaseError counts a database error of class DBTransient or DBPermanent.
func (m *Bridge) DatabaseError(class string) {
	if m != nil {
		m.dbErrors.WithLabelValues(oneOf(class, DBTransient, DBPermanent)).Inc()
	}
}

// CheckedIn records a successful check-in.
func (m *Bridge) CheckedIn() {
	if m != nil {
		m.checkedIn.mark()
	}
}
