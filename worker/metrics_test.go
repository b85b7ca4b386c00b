package worker_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"


	"github.com/vclq/vclq/health"
	"github.com/vclq/vclq/internal/promtest"
	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/metrics"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// startMetricsPool starts a pool with metrics on and its /metrics, /healthz and
// /readyz endpoints on a loopback port.
func startMetricsPool(t *testing.T, j *testutil.JetStream, h worker.Handler, cfg worker.Config) (*worker.Pool, string, func()) {
	t.Helper()
	reg := metrics.NewRegistry()
	m, err := metrics.NewWorker(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Metrics = m
	if cfg.QueueInfoInterval == 0 {
		cfg.QueueInfoInterval = 200 * time.Millisecond
	}
	p, stop := startPool(t, j, h, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	addr, wait, err := metrics.Serve(ctx, "127.0.0.1:0", reg, testLogger(t), health.Static(p.HealthChecks()...))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := wait(); err != nil {
			t.Errorf("metrics server: %v", err)
		}
	})
	return p, addr, stop
}

// workerLabels are the worker's bounded label sets.
func workerLabels(hosts ...string) map[string]func(string) bool {
	kinds := []string{metrics.Unknown}
	for _, k := range messages.Kinds {
		kinds = append(kinds, string(k))
	}
	return map[string]func(string) bool{
		"kind":    promtest.OneOf(kinds...),
		"outcome": promtest.OneOf(metrics.JobSuccess, metrics.JobFailed, metrics.JobRejected, metrics.JobStale, metrics.JobHandedBack, metrics.StepSuccess, metrics.StepFailed, metrics.Other),
		"step":    func(v string) bool { return v == metrics.Other || messages.ValidLoadstateName(v) },
		"reason":  promtest.OneOf(metrics.DeadLetterRejected, metrics.DeadLetterMaxDeliver, metrics.DeadLetterPermanent, metrics.DeadLetterSwept),
		"at":      promtest.OneOf(metrics.LeaseLostRenewal, metrics.LeaseLostGuard),
		"host":    promtest.OneOf(hosts...),
	}
}

// TestMetricsMoveWithTheWork runs real jobs (the simulated handler on an embedded
// JetStream) and scrapes /metrics over HTTP while they run and after: the counters
// and histograms match the work done, and the label sets stay bounded.
func TestMetricsMoveWithTheWork(t *testing.T) {
	const (
		good        = 40 // succeed
		concurrency = 6
		failing     = 9001 // fails on every delivery: dead letter on the 3rd
		permanent   = 9002 // fails permanently on its first
	)
	j := startJS(t, streams.Options{AckWait: 3 * time.Second, MaxDeliver: 3})
	h := sim(t, fmt.Sprintf("work=200ms..400ms,fail=reservations:%d,permfail=reservations:%d", failing, permanent))
	_, addr, _ := startMetricsPool(t, j, h, worker.Config{ID: "metrics-w1", Concurrency: concurrency, LeaseTTL: time.Second})

	before := promtest.Scrape(t, addr)
	if got := before.Value("vclq_worker_job_slots_free"); got != concurrency {
		t.Errorf("idle: job_slots_free %v, want %d", got, concurrency)
	}
	for i := range good {
		publish(t, j, simhandler.Request(messages.KindNew, int64(1000+i), int64(1+i%10)))
	}
	publish(t, j, simhandler.Request(messages.KindNew, failing, 20))
	publish(t, j, simhandler.Request(messages.KindImage, permanent, 21))
	publishRaw(t, j, messages.KindNew.Subject(), []byte(`{"schema":1,"kind":"new","reservation":{"id":123456}}`), "")
	const results = good + 3

	// Scrape while the jobs run: in flight never exceeds the slots, and is seen > 0.
	maxInFlight, scrapes := 0.0, 0
	var lastResults float64
	testutil.WaitFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		f := promtest.Scrape(t, addr)
		scrapes++
		inFlight := f.Value("vclq_worker_jobs_in_flight")
		if inFlight > concurrency || inFlight+f.Value("vclq_worker_job_slots_free") != concurrency {
			t.Errorf("in flight %v, free %v: not %d slots", inFlight, f.Value("vclq_worker_job_slots_free"), concurrency)
		}
		maxInFlight = max(maxInFlight, inFlight)
		n := f.Value("vclq_worker_results_total")
		if n < lastResults {
			t.Errorf("results_total went down: %v after %v", n, lastResults)
		}
		lastResults = n
		if n < results {
			return fmt.Errorf("%v results of %d", n, results)
		}
		return nil
	})
	waitResults(t, j, results, 10*time.Second)
	// The queue gauges come from the background consumer info (every 200ms here).
	var f promtest.Families
	testutil.WaitFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		f = promtest.Scrape(t, addr)
		if d, a := f.Value("vclq_worker_queue_depth"), f.Value("vclq_worker_ack_pending"); d != 0 || a != 0 || f.Value("vclq_worker_jobs_in_flight") != 0 {
			return fmt.Errorf("queue depth %v, ack pending %v, in flight %v", d, a, f.Value("vclq_worker_jobs_in_flight"))
		}
		return nil
	})

	type want struct {
		name string
		got  float64
		want float64
	}
	checks := []want{
		{"results_total{new,success}", f.Value("vclq_worker_results_total", "kind", "new", "outcome", "success"), good},
		{"results_total{new,failed}", f.Value("vclq_worker_results_total", "kind", "new", "outcome", "failed"), 1},
		{"results_total{image,failed}", f.Value("vclq_worker_results_total", "kind", "image", "outcome", "failed"), 1},
		{"results_total{rejected}", f.Value("vclq_worker_results_total", "outcome", "rejected"), 1},
		{"results_total", f.Value("vclq_worker_results_total"), results},
		{"job_duration count{new,success}", float64(f.Count("vclq_worker_job_duration_seconds", "kind", "new", "outcome", "success")), good},
		{"job_duration count{new,handed_back}", float64(f.Count("vclq_worker_job_duration_seconds", "kind", "new", "outcome", "handed_back")), 2},
		{"job_duration count{rejected}", float64(f.Count("vclq_worker_job_duration_seconds", "outcome", "rejected")), 1},
		{"step_duration count{new,statuscheck,success}", float64(f.Count("vclq_worker_step_duration_seconds", "kind", "new", "step", "statuscheck", "outcome", "success")), good},
		{"redeliveries_total", f.Value("vclq_worker_redeliveries_total"), 2},
		{"dead_letters_total{max_deliver}", f.Value("vclq_worker_dead_letters_total", "reason", "max_deliver"), 1},
		{"dead_letters_total{permanent}", f.Value("vclq_worker_dead_letters_total", "reason", "permanent"), 1},
		{"dead_letters_total{rejected}", f.Value("vclq_worker_dead_letters_total", "reason", "rejected"), 1},
		{"lease_losses_total", f.Value("vclq_worker_lease_losses_total"), 0},
		{"stale_deliveries_total", f.Value("vclq_worker_stale_deliveries_total"), 0},
		{"job_slots_free", f.Value("vclq_worker_job_slots_free"), concurrency},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	renewals := f.Value("vclq_worker_lease_renewals_total")
	// Jobs run 200-400ms and the 1s lease is renewed every 333ms: about a third of
	// the jobs renew once.
	if renewals < good/8 {
		t.Errorf("lease_renewals_total = %v, want at least %d", renewals, good/8)
	}
	if maxInFlight < 2 {
		t.Errorf("at most %v jobs seen in flight over %d scrapes", maxInFlight, scrapes)
	}
	// A step's sum is the simulated work: 200-400ms each.
	stepSum := 0.0
	for _, m := range f["vclq_worker_step_duration_seconds"].GetMetric() {
		stepSum += m.GetHistogram().GetSampleSum()
	}
	if lo, hi := 0.2*good, 0.45*good; stepSum < lo || stepSum > hi {
		t.Errorf("step durations sum %.2fs, want %.1f-%.1fs", stepSum, lo, hi)
	}
	n := promtest.CheckBounded(t, f, "vclq_", workerLabels(), 60)
	t.Logf("%d scrapes, max %v in flight; %v results (%v success), %v redeliveries, %v renewals, step sum %.2fs; %d vclq series",
		scrapes, maxInFlight, f.Value("vclq_worker_results_total"), f.Value("vclq_worker_results_total", "outcome", "success"),
		f.Value("vclq_worker_redeliveries_total"), renewals, stepSum, n)

	// More work of the same kinds adds no series: the label sets do not grow with it.
	for i := range 20 {
		publish(t, j, simhandler.Request(messages.KindNew, int64(5000+i), int64(1+i%10)))
	}
	waitResults(t, j, results+20, 30*time.Second)
	testutil.WaitFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		f = promtest.Scrape(t, addr)
		if got := f.Value("vclq_worker_results_total", "outcome", "success"); got != good+20 {
			return fmt.Errorf("%v successes, want %d", got, good+20)
		}
		return nil
	})
	if n2 := f.Series("vclq_"); n2 != n {
		t.Errorf("%d vclq series after 20 more jobs, %d before", n2, n)
	}
}

// TestReadyzFollowsNATS: /readyz is 200 while the worker is connected and bound, 503
// with the reason while its NATS server is down, and 200 again once the server is
// back on the same port and store directory; /healthz stays 200 throughout.
func TestReadyzFollowsNATS(t *testing.T) {
	j := startJS(t, streams.Options{})
	_, addr, _ := startMetricsPool(t, j, sim(t, ""), worker.Config{ID: "ready-w1", Concurrency: 2})

	ready := func(want int, wantBody string) func() error {
		return func() error {
			code, body, err := promtest.Get("http://" + addr + "/readyz")
			if err != nil {
				return err
			}
			if code != want || !strings.Contains(body, wantBody) {
				return fmt.Errorf("readyz %d %q, want %d with %q", code, body, want, wantBody)
			}
			return nil
		}
	}
	live := func() {
		t.Helper()
		if code, body, err := promtest.Get("http://" + addr + "/healthz"); err != nil || code != http.StatusOK {
			t.Errorf("healthz %d %q %v", code, body, err)
		}
	}
	steps := []struct {
		name   string
		action func()
		code   int
		body   string
	}{
		{"running", func() {}, http.StatusOK, "nats: ok\nconsumer: ok\nconfig: ok\n"},
		{"NATS stopped", j.Stop, http.StatusServiceUnavailable, "nats: not connected"},
		{"NATS back", func() { j.Restart(t) }, http.StatusOK, "nats: ok\nconsumer: ok\nconfig: ok\n"},
	}
	for _, s := range steps {
		start := time.Now()
		s.action()
		testutil.WaitFor(t, 20*time.Second, 50*time.Millisecond, ready(s.code, s.body))
		_, body, _ := promtest.Get("http://" + addr + "/readyz")
		t.Logf("%s: readyz %d after %s: %q", s.name, s.code, time.Since(start).Round(time.Millisecond), body)
		live()
	}
	// And it still works: a job runs after the restart.
	publish(t, j, simhandler.Request(messages.KindNew, 77, 1))
	waitResults(t, j, 1, 20*time.Second)
}
