// Package grafana_test checks deployments/grafana/vclq.json against what the
// components expose.
package grafana_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/bridge"
	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/health"
	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/internal/promtest"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/metrics"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Panels []struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

var (
	braces   = regexp.MustCompile(`\{[^}]*\}`)
	brackets = regexp.MustCompile(`\[[^\]]*\]`)
	grouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	ident    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	strs     = regexp.MustCompile(`"[^"]*"`)
	keywords = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "instance", "inf", "nan"}
)

// metricNames extracts the metric names an expression reads: identifiers outside
// label matchers, ranges and groupings that are neither functions nor keywords.
func metricNames(expr string) []string {
	e := strs.ReplaceAllString(expr, `""`)
	e = braces.ReplaceAllString(e, " ")
	e = brackets.ReplaceAllString(e, " ")
	e = grouping.ReplaceAllString(e, " ")
	var out []string
	for _, loc := range ident.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		rest := strings.TrimLeft(e[loc[1]:], " ")
		if strings.HasPrefix(rest, "(") || slices.Contains(keywords, strings.ToLower(name)) {
			continue
		}
		if loc[0] > 0 && (e[loc[0]-1] >= '0' && e[loc[0]-1] <= '9' || e[loc[0]-1] == '.') {
			continue // a number's exponent or unit
		}
		out = append(out, name)
	}
	return out
}

func TestMetricNames(t *testing.T) {
	cases := []struct {
		expr string
		want []string
	}{
		{`max(vclq_worker_queue_depth)`, []string{"vclq_worker_queue_depth"}},
		{`histogram_quantile(0.95, sum by (le, step) (rate(vclq_worker_step_duration_seconds_bucket{instance=~"$instance",outcome="success"}[$__rate_interval])))`,
			[]string{"vclq_worker_step_duration_seconds_bucket"}},
		{`sum(rate(a_sum[5m])) / sum(rate(a_count[5m]))`, []string{"a_sum", "a_count"}},
		{`label_values(vclq_worker_job_slots, instance)`, []string{"vclq_worker_job_slots"}},
	}
	for _, c := range cases {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%s) = %q, want %q", c.expr, got, c.want)
		}
	}
}

// exposed reports whether name is a family of fams, or a histogram's _bucket, _sum
// or _count series.
func exposed(fams promtest.Families, name string) bool {
	if _, ok := fams[name]; ok {
		return true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok {
			if f, ok := fams[base]; ok && f.GetType().String() == "HISTOGRAM" {
				return true
			}
		}
	}
	return false
}

// TestDashboardQueriesNameExposedMetrics: every panel query (and template variable)
// of deployments/grafana/vclq.json names only metrics that a real worker (jobs run,
// an ESX host called) and a real bridge (a request bridged on MariaDB) expose.
func TestDashboardQueriesNameExposedMetrics(t *testing.T) {
	raw, err := os.ReadFile("vclq.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("vclq.json: %v", err)
	}
	fams := scrapeSite(t)
	t.Logf("scraped %d families (%d vclq_*)", len(fams), len(fams.Names("vclq_")))

	queries, names := 0, map[string]bool{}
	check := func(where, expr string) {
		queries++
		ns := metricNames(expr)
		if len(ns) == 0 {
			t.Errorf("%s: %q names no metric", where, expr)
		}
		for _, n := range ns {
			names[n] = true
			if !exposed(fams, n) {
				t.Errorf("%s: %q reads %s, which neither the worker nor the bridge exposes", where, expr, n)
			}
		}
	}
	for _, p := range d.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			check("panel "+p.Title, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Definition != "" {
			check("variable "+v.Name, v.Definition)
		}
	}
	t.Logf("%d panels, %d queries, %d distinct metric names checked against the scrapes", len(d.Panels), queries, len(names))
	for _, want := range []string{"vclq_worker_queue_depth", "vclq_worker_results_total", "vclq_worker_step_duration_seconds_bucket",
		"vclq_worker_host_calls_in_flight", "vclq_bridge_apply_lag_seconds_bucket"} {
		if !names[want] {
			t.Errorf("no panel reads %s", want)
		}
	}
}

// scrapeSite runs a worker pool with metrics (simulated flows that emit VCL's loadlog
// steps), calls a simulated ESX host through the worker's observer, bridges one new
// reservation from a MariaDB site, and returns the union of both processes' scrapes.
func scrapeSite(t *testing.T) promtest.Families {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	if err := bt.Reachable(ctx); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("MariaDB at %s unreachable under CI: %v", bt.Addr(), err)
		}
		t.Skipf("MariaDB at %s is unreachable (scripts/test-deps.sh starts it): %v", bt.Addr(), err)
	}
	j := testutil.StartVCLJetStream(t, streams.Options{AckWait: 5 * time.Second, MaxDeliver: 5})

	// The worker.
	wreg := metrics.NewRegistry()
	wm, err := metrics.NewWorker(wreg)
	if err != nil {
		t.Fatal(err)
	}
	key, err := bridge.NewSealKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := worker.New(j.JS, j.NC, &bt.StateExit{SealTo: key.PublicKey(), Step: 5 * time.Millisecond}, worker.Config{
		ID: "dash-w1", Concurrency: 2, PollWait: 300 * time.Millisecond, Metrics: wm, QueueInfoInterval: 200 * time.Millisecond,
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	waddr := serveReg(t, ctx, wreg, health.Static(p.HealthChecks()...))
	runUntilCleanup(t, p.Run)

	// An ESX host call through the worker's observer.
	h := esxsim.StartTB(t, esxsim.Options{}).Hosts[0]
	esx, err := hypervisor.New(h.HostConfig(), hypervisor.WithObserver(wm))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = esx.Close(context.Background()) })
	if err := esx.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	// The bridge on a fresh site database.
	site, err := bt.Create(ctx, bt.SchemaOwn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(site.Drop)
	dsn, err := bridge.DSN(site.DSN)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := bt.LoadSite(ctx, db, 0); err != nil {
		t.Fatal(err)
	}
	reqID, _, err := bt.AddRequest(ctx, db, bt.Req{State: "new", Computer: bt.FirstVM})
	if err != nil {
		t.Fatal(err)
	}
	breg := metrics.NewRegistry()
	bm, err := metrics.NewBridge(breg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bridge.New(ctx, db, j.JS, bridge.Config{ManagementNodes: []int64{bt.MNOurs}, Interval: 200 * time.Millisecond,
		FetchWait: 200 * time.Millisecond, SealKey: key, Metrics: bm}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	baddr := serveReg(t, ctx, breg, health.Static(b.HealthChecks()...))
	runUntilCleanup(t, b.Run)
	testutil.WaitFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		st, err := bt.RequestState(ctx, db, reqID)
		if err != nil || st != "reserved/new" {
			return fmt.Errorf("request %d: %s %v", reqID, st, err)
		}
		return nil
	})
	fams := promtest.Families{}
	for _, addr := range []string{waddr, baddr} {
		for name, f := range promtest.Scrape(t, addr) {
			fams[name] = f
		}
	}
	return fams
}

// serveReg serves reg and checks on a loopback port until ctx ends (or the test).
func serveReg(t *testing.T, ctx context.Context, reg *prometheus.Registry, checks health.List) string {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	addr, wait, err := metrics.Serve(ctx, "127.0.0.1:0", reg, zerolog.Nop(), checks)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = wait() })
	return addr
}

// runUntilCleanup runs run in the background until the test ends.
func runUntilCleanup(t *testing.T, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("did not stop within 30s")
		}
	})
}
