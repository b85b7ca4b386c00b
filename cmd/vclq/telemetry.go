package main

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/health"
	"github.com/vclq/vclq/metrics"
)

// telemetry is a process's metrics registry and its HTTP endpoints (/metrics,
// /healthz, /readyz on --metrics-addr). A nil *telemetry (no address) does nothing.
type telemetry struct {
	addr   string
	reg    *prometheus.Registry
	log    zerolog.Logger
	checks atomic.Pointer[[]health.Check]
	stop   context.CancelFunc
	wait   func() error
}

// newTelemetry returns nil when addr is empty: metrics and health are off.
func newTelemetry(addr string, log zerolog.Logger) *telemetry {
	if addr == "" {
		return nil
	}
	return &telemetry{addr: addr, reg: metrics.NewRegistry(), log: log}
}

// errStarting is what /readyz reports until the component's checks are set.
var errStarting = errors.New("starting")

// start listens and serves until close (or ctx's end). Until setChecks is called,
// /readyz answers 503 "starting".
func (t *telemetry) start(ctx context.Context) error {
	if t == nil {
		return nil
	}
	sctx, stop := context.WithCancel(ctx)
	starting := []health.Check{{Name: "startup", Fn: func(context.Context) error { return errStarting }}}
	list := func() []health.Check {
		if cs := t.checks.Load(); cs != nil {
			return *cs
		}
		return starting
	}
	addr, wait, err := metrics.Serve(sctx, t.addr, t.reg, t.log, list)
	if err != nil {
		stop()
		return err
	}
	t.addr, t.stop, t.wait = addr, stop, wait
	return nil
}

// setChecks sets the readiness checks of the running component.
func (t *telemetry) setChecks(cs []health.Check) {
	if t != nil {
		t.checks.Store(&cs)
	}
}

// close stops the server and waits for it.
func (t *telemetry) close() {
	if t == nil || t.stop == nil {
		return
	}
	t.stop()
	if err := t.wait(); err != nil {
		t.log.Warn().Err(err).Msg("metrics server")
	}
}

func (t *telemetry) worker() (*metrics.Worker, error) {
	if t == nil {
		return nil, nil
	}
	return metrics.NewWorker(t.reg)
}

func (t *telemetry) bridge() (*metrics.Bridge, error) {
	if t == nil {
		return nil, nil
	}
	return metrics.NewBridge(t.reg)
}
