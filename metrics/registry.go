package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vclq/vclq/messages"
)

// NewRegistry returns a registry for one process with the Go runtime and process
// collectors registered.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Namespace prefixes every vclq metric.
const Namespace = "vclq"

// Unknown is the label value of a kind that is not a request kind (a rejected message).
const Unknown = "unknown"

// Other is the label value of a step name that is not a VCL computerloadstate name.
const Other = "other"

func kindLabel(k messages.Kind) string {
	if k.Valid() {
		return string(k)
	}
	return Unknown
}

func stepLabel(name string) string {
	if messages.ValidLoadstateName(name) {
		return name
	}
	return Other
}

// oneOf returns v when it is in allowed, else Other.
func oneOf(v string, allowed ...string) string {
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	return Other
}

// register registers every collector, returning the first error.
func register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Buckets of durations, in seconds: jobs and steps run from milliseconds (a simulated
// step, a stale delivery) to many minutes (a full copy, a capture).
func jobBuckets() []float64 {
	return []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600}
}

func stepBuckets() []float64 {
	return []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}
}

func lagBuckets() []float64 {
	return []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900}
}
