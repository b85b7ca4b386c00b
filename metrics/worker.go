package metrics

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vclq/vclq/messages"
)

// Job outcomes (the outcome label of vclq_worker_job_duration_seconds): the result
// the delivery published, or what else ended it.
const (
	JobSuccess    = "success"     // a success result
	JobFailed     = "failed"      // a failed result (final failure, cancelled, superseded)
	JobRejected   = "rejected"    // an invalid request: rejected result, dead letter
	JobStale      = "stale"       // a stale delivery: the request already had a result
	JobHandedBack = "handed_back" // no result: retried later, shutdown, lease lost, busy slot
)

// Step outcomes (vclq_worker_step_duration_seconds).
const (
	StepSuccess = "success" // the loadlog end event
	StepFailed  = "failed"  // the loadlog fail event
)

// Dead-letter reasons (vclq_worker_dead_letters_total).
const (
	DeadLetterRejected   = "rejected"    // an invalid request
	DeadLetterMaxDeliver = "max_deliver" // the final delivery failed
	DeadLetterPermanent  = "permanent"   // a permanent failure (never retried)
	DeadLetterSwept      = "swept"       // moved by the sweeper after a max-deliveries advisory
)

// Where a lease was found lost (vclq_worker_lease_losses_total).
const (
	LeaseLostRenewal = "renewal"
	LeaseLostGuard   = "guard"
)

// Worker holds a worker process's metrics. All methods are safe on a nil *Worker.
type Worker struct {
	inFlight, slotsFree, slots prometheus.Gauge

	mu      sync.Mutex
	running int
	total   int

	jobDuration  *prometheus.HistogramVec
	stepDuration *prometheus.HistogramVec
	results      *prometheus.CounterVec
	redeliveries prometheus.Counter
	stale        prometheus.Counter
	superseded   prometheus.Counter
	renewals     prometheus.Counter
	renewFails   prometheus.Counter
	leaseLosses  *prometheus.CounterVec
	deadLetters  *prometheus.CounterVec

	hostInFlight *prometheus.GaugeVec
	hostCalls    *prometheus.CounterVec
	hostErrors   *prometheus.CounterVec

	queueDepth, ackPending, redelivering prometheus.Gauge
	queueInfoAt                          moment
}

// NewWorker registers a worker's metrics on reg.
func NewWorker(reg prometheus.Registerer) (*Worker, error) {
	const sub = "worker"
	g, c, cv := subsystem(sub).gauge, subsystem(sub).counter, subsystem(sub).counterVec
	m := &Worker{
		inFlight:  g("jobs_in_flight", "Jobs this worker is processing (each holds a job slot)."),
		slotsFree: g("job_slots_free", "Job slots of this worker not held by a job."),
		slots:     g("job_slots", "Job slots of this worker (its concurrency)."),
		jobDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub,
			Name: "job_duration_seconds", Help: "Time from a delivery's arrival to its outcome, by request kind and outcome.",
			Buckets: jobBuckets()}, []string{"kind", "outcome"}),
		stepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub,
			Name: "step_duration_seconds", Help: "Duration of flow steps (loadlog end and fail events), by request kind, step (VCL loadstate name) and outcome.",
			Buckets: stepBuckets()}, []string{"kind", "step", "outcome"}),
		results:      cv("results_total", "Results published, by request kind and outcome (success, failed, rejected).", "kind", "outcome"),
		redeliveries: c("redeliveries_total", "Deliveries of a request after its first (delivery count > 1)."),
		stale:        c("stale_deliveries_total", "Stale deliveries skipped: the request already had a result."),
		superseded:   c("superseded_total", "Requests failed as superseded: their slot had served a newer request."),
		renewals:     c("lease_renewals_total", "Slot lease renewals stored."),
		renewFails:   c("lease_renewal_failures_total", "Slot lease renewals that failed (retried, or the lease was lost)."),
		leaseLosses:  cv("lease_losses_total", "Slot leases lost while a job held them, by where it was found (renewal, guard).", "at"),
		deadLetters:  cv("dead_letters_total", "Requests moved to the dead letters, by reason (rejected, max_deliver, swept).", "reason"),
		hostInFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: sub,
			Name: "host_calls_in_flight", Help: "Calls to an ESX host in progress, by configured vmhost name."}, []string{"host"}),
		hostCalls:    cv("host_calls_total", "Calls to an ESX host (each with its retries), by configured vmhost name.", "host"),
		hostErrors:   cv("host_call_errors_total", "Calls to an ESX host that failed after their retries, by configured vmhost name.", "host"),
		queueDepth:   g("queue_depth", "Requests waiting in the worker consumer (NumPending), refreshed in the background."),
		ackPending:   g("ack_pending", "Requests delivered and not yet acknowledged (NumAckPending), refreshed in the background."),
		redelivering: g("redelivered_pending", "Requests waiting for redelivery (NumRedelivered), refreshed in the background."),
	}
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: sub, Name: "queue_info_age_seconds",
		Help: "Seconds since the queue gauges were last refreshed from the consumer info (-1: never)."}, m.queueInfoAt.age)
	err := register(reg, m.inFlight, m.slotsFree, m.slots, m.jobDuration, m.stepDuration, m.results, m.redeliveries,
		m.stale, m.superseded, m.renewals, m.renewFails, m.leaseLosses, m.deadLetters, m.hostInFlight, m.hostCalls,
		m.hostErrors, m.queueDepth, m.ackPending, m.redelivering, age)
	if err != nil {
		return nil, err
	}
	// Series that exist from the start, so that rates and alerts see zeros.
	for _, at := range []string{LeaseLostRenewal, LeaseLostGuard} {
		m.leaseLosses.WithLabelValues(at)
	}
	for _, r := range []string{DeadLetterRejected, DeadLetterMaxDeliver, DeadLetterPermanent, DeadLetterSwept} {
		m.deadLetters.WithLabelValues(r)
	}
	return m, nil
}

// SetSlots sets the number of job slots.
func (m *Worker) SetSlots(n int) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.total = n
	m.slots.Set(float64(n))
	m.slotsFree.Set(float64(m.total - m.running))
}

// JobStarted counts a job that took a job slot; call the returned function when it
// gives the slot back.
func (m *Worker) JobStarted() (done func()) {
	if m == nil {
		return func() {}
	}
	m.addRunning(1)
	var once sync.Once
	return func() { once.Do(func() { m.addRunning(-1) }) }
}

func (m *Worker) addRunning(d int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.running += d
	m.inFlight.Set(float64(m.running))
	m.slotsFree.Set(float64(m.total - m.running))
}

// JobDone observes a delivery's duration with its outcome (Job*).
func (m *Worker) JobDone(kind messages.Kind, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	outcome = oneOf(outcome, JobSuccess, JobFailed, JobRejected, JobStale, JobHandedBack)
	m.jobDuration.WithLabelValues(kindLabel(kind), outcome).Observe(d.Seconds())
}

// Step observes a step's duration from its loadlog end or fail event; other phases
// are ignored.
func (m *Worker) Step(kind messages.Kind, name string, phase messages.Phase, d time.Duration) {
	if m == nil {
		return
	}
	var outcome string
	switch phase {
	case messages.PhaseEnd:
		outcome = StepSuccess
	case messages.PhaseFail:
		outcome = StepFailed
	default:
		return
	}
	m.stepDuration.WithLabelValues(kindLabel(kind), stepLabel(name), outcome).Observe(d.Seconds())
}

// Result counts a published result.
func (m *Worker) Result(kind messages.Kind, outcome messages.Outcome) {
	if m == nil {
		return
	}
	o := oneOf(string(outcome), string(messages.OutcomeSuccess), string(messages.OutcomeFailed), string(messages.OutcomeRejected))
	m.results.WithLabelValues(kindLabel(kind), o).Inc()
}

// Redelivery counts a delivery after the first.
func (m *Worker) Redelivery() {
	if m != nil {
		m.redeliveries.Inc()
	}
}

// Stale counts a stale delivery skipped.
func (m *Worker) Stale() {
	if m != nil {
		m.stale.Inc()
	}
}

// Superseded counts a request failed as superseded.
func (m *Worker) Superseded() {
	if m != nil {
		m.superseded.Inc()
	}
}

// LeaseRenewed counts a stored lease renewal.
func (m *Worker) LeaseRenewed() {
	if m != nil {
		m.renewals.Inc()
	}
}

// LeaseRenewalFailed counts a failed lease renewal.
func (m *Worker) LeaseRenewalFailed() {
	if m != nil {
		m.renewFails.Inc()
	}
}

// LeaseLost counts a lease lost, found at LeaseLostRenewal or LeaseLostGuard.
func (m *Worker) LeaseLost(at string) {
	if m != nil {
		m.leaseLosses.WithLabelValues(oneOf(at, LeaseLostRenewal, LeaseLostGuard)).Inc()
	}
}

// DeadLetter counts a dead letter stored, with its reason (DeadLetter*).
func (m *Worker) DeadLetter(reason string) {
	if m != nil {
		m.deadLetters.WithLabelValues(oneOf(reason, DeadLetterRejected, DeadLetterMaxDeliver, DeadLetterPermanent, DeadLetterSwept)).Inc()
	}
}

// HostCallStarted counts a call to the ESX host in flight; done ends it, counting an
// error unless the caller cancelled it. It makes *Worker a hypervisor.CallObserver.
func (m *Worker) HostCallStarted(host string) (done func(err error)) {
	if m == nil {
		return func(error) {}
	}
	m.hostCalls.WithLabelValues(host).Inc()
	errs := m.hostErrors.WithLabelValues(host) // the series exists (0) from the first call
	g := m.hostInFlight.WithLabelValues(host)
	g.Inc()
	return func(err error) {
		g.Dec()
		if err != nil && !errors.Is(err, context.Canceled) {
			errs.Inc()
		}
	}
}

// QueueInfo sets the queue gauges from the worker consumer's info.
func (m *Worker) QueueInfo(pending, ackPending, redelivered uint64) {
	if m == nil {
		return
	}
	m.queueDepth.Set(float64(pending))
	m.ackPending.Set(float64(ackPending))
	m.redelivering.Set(float64(redelivered))
	m.queueInfoAt.mark()
}
