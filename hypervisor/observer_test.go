package hypervisor_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/health"
	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/internal/promtest"
	"github.com/vclq/vclq/metrics"
)

// TestObserverCountsHostCalls: the worker's metrics, as the host client's observer,
// count every call to a (simulated) ESX host by its configured name, and the calls
// that failed; nothing is left in flight.
func TestObserverCountsHostCalls(t *testing.T) {
	h := esxsim.StartTB(t, esxsim.Options{}).Hosts[0]
	reg := metrics.NewRegistry()
	m, err := metrics.NewWorker(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := h.HostConfig()
	cfg.MaxAttempts, cfg.Backoff, cfg.BackoffMax = 2, time.Millisecond, 5*time.Millisecond
	c, err := hypervisor.New(cfg, hypervisor.WithObserver(m))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	calls := []struct {
		name    string
		call    func() error
		wantErr bool
	}{
		{"ping", func() error { return c.Ping(ctx) }, false},
		{"ping again", func() error { return c.Ping(ctx) }, false},
		{"a call the host refuses", func() error {
			remove := h.AddFault(esxsim.Permanent("RetrievePropertiesEx", func() types.BaseMethodFault { return &types.NoPermission{} }))
			defer remove()
			return c.PowerOn(ctx, slot("vm-1", 1))
		}, true},
	}
	wantErrors := 0
	for _, k := range calls {
		err := k.call()
		if (err != nil) != k.wantErr {
			t.Fatalf("%s: error %v, want error %v", k.name, err, k.wantErr)
		}
		if k.wantErr {
			wantErrors++
		}
	}
	sctx, cancel := context.WithCancel(context.Background())
	addr, wait, err := metrics.Serve(sctx, "127.0.0.1:0", reg, zerolog.Nop(), health.Static())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = wait() }()
	f := promtest.Scrape(t, addr)
	total := f.Value("vclq_worker_host_calls_total", "host", h.Name)
	errs := f.Value("vclq_worker_host_call_errors_total", "host", h.Name)
	t.Logf("host %s: %v calls, %v errors, %v in flight", h.Name, total, errs, f.Value("vclq_worker_host_calls_in_flight"))
	if total < float64(len(calls)) {
		t.Errorf("host_calls_total %v, want at least %d", total, len(calls))
	}
	if errs != float64(wantErrors) {
		t.Errorf("host_call_errors_total %v, want %d", errs, wantErrors)
	}
	if got := f.Value("vclq_worker_host_calls_in_flight"); got != 0 {
		t.Errorf("host_calls_in_flight %v after the calls", got)
	}
	promtest.CheckBounded(t, f, "vclq_worker_host_", map[string]func(string) bool{"host": promtest.OneOf(h.Name)}, 3)
}
