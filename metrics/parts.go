package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Building blocks shared by the worker's and the bridge's metrics.

// moment is when something last happened (a check-in, a refresh), safe for
// concurrent use; the zero value is "never".
type moment struct {
	mu sync.Mutex
	at time.Time
}

func (m *moment) mark() {
	m.mu.Lock()
	m.at = time.Now()
	m.mu.Unlock()
}

// age is the seconds since the last mark, or -1 before the first (a GaugeFunc).
func (m *moment) age() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.at.IsZero() {
		return -1
	}
	return time.Since(m.at).Seconds()
}

// subsystem makes the metrics of one component (vclq_<subsystem>_<name>).
type subsystem string

func (s subsystem) gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: string(s), Name: name, Help: help})
}

func (s subsystem) counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: string(s), Name: name, Help: help})
}

func (s subsystem) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: string(s), Name: name, Help: help}, labels)
}
