package bridge

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/nats-io/nats.go/jetstream"

	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/health"
	"github.com/vclq/vclq/internal/promtest"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/metrics"
)

// eventCounts counts the loadlog and result events stored in VCL_EVENTS.
func eventCounts(t *testing.T, j *testutil.JetStream) (loadlogs, results int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := j.JS.Stream(ctx, messages.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(messages.SubjectEventsAll))
	if err != nil {
		t.Fatal(err)
	}
	for subj, n := range info.State.Subjects {
		switch {
		case strings.HasPrefix(subj, messages.SubjectLoadlogPrefix):
			loadlogs += int(n)
		case strings.HasPrefix(subj, messages.SubjectResultPrefix):
			results += int(n)
		}
	}
	return loadlogs, results
}

// TestBridgeMetricsMoveWithTheSite bridges the fixture site end to end (MariaDB, an
// embedded JetStream, worker pools) with the bridge's metrics served over HTTP: the
// rows claimed and failed, the events applied (each with a lag) and the check-in age
// match what happened, the label sets are bounded, and /readyz is 200.
func TestBridgeMetricsMoveWithTheSite(t *testing.T) {
	s := newSite(t, bt.SchemaOwn)
	j := testutil.StartVCLJetStream(t, e2eStreams())
	key, _ := NewSealKey(nil)
	rows := siteRows()
	addRows(s, rows)
	startWorkers(t, j, 2, &bt.StateExit{SealTo: key.PublicKey(), Step: 5 * time.Millisecond})

	reg := metrics.NewRegistry()
	m, err := metrics.NewBridge(reg)
	if err != nil {
		t.Fatal(err)
	}
	b := newBridge(t, s, j, Config{SealKey: key, Interval: 200 * time.Millisecond, Metrics: m})
	ctx, cancel := context.WithCancel(context.Background())
	addr, wait, err := metrics.Serve(ctx, "127.0.0.1:0", reg, s.log, health.Static(b.HealthChecks()...))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = wait() })

	f := promtest.Scrape(t, addr)
	if got := f.Value("vclq_bridge_checkin_age_seconds"); got != -1 {
		t.Errorf("before the first poll: checkin_age %v, want -1", got)
	}
	stop, _ := run(t, b)
	waitSite(t, s, rows, 60*time.Second)
	consumerIdle(t, j, 20*time.Second)
	loadlogs, results := eventCounts(t, j)
	testutil.WaitFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		f = promtest.Scrape(t, addr)
		if got := f.Value("vclq_bridge_events_applied_total"); got != float64(loadlogs+results) {
			return fmt.Errorf("%v events applied, %d stored", got, loadlogs+results)
		}
		return nil
	})
	code, body, err := promtest.Get("http://" + addr + "/readyz")
	if err != nil || code != http.StatusOK {
		t.Errorf("readyz %d %q %v", code, body, err)
	}
	stop()

	checks := []struct {
		name      string
		got, want float64
	}{
		{"rows_claimed_total", f.Value("vclq_bridge_rows_claimed_total"), 8}, // 6 rows + the 2 reloads their results queue
		{"rows_failed_total", f.Value("vclq_bridge_rows_failed_total"), 1},   // the OS vclq cannot run
		{"events_applied_total{result}", f.Value("vclq_bridge_events_applied_total", "type", "result"), float64(results)},
		{"events_applied_total{loadlog}", f.Value("vclq_bridge_events_applied_total", "type", "loadlog"), float64(loadlogs)},
		{"apply_lag count", float64(f.Count("vclq_bridge_apply_lag_seconds")), float64(loadlogs + results)},
		{"events_terminated_total", f.Value("vclq_bridge_events_terminated_total"), 0},
		{"database_errors_total", f.Value("vclq_bridge_database_errors_total"), 0},
		{"polls_total{error}", f.Value("vclq_bridge_polls_total", "outcome", "error"), 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if age := f.Value("vclq_bridge_checkin_age_seconds"); age < 0 || age > 5 {
		t.Errorf("checkin_age_seconds %v while polling every 200ms", age)
	}
	if polls := f.Value("vclq_bridge_polls_total", "outcome", "ok"); polls < 2 {
		t.Errorf("%v polls", polls)
	}
	var lagSum float64
	for _, mm := range f["vclq_bridge_apply_lag_seconds"].GetMetric() {
		lagSum += mm.GetHistogram().GetSampleSum()
	}
	n := promtest.CheckBounded(t, f, "vclq_bridge_", map[string]func(string) bool{
		"type":    promtest.OneOf(metrics.EventLoadlog, metrics.EventResult),
		"class":   promtest.OneOf(metrics.DBTransient, metrics.DBPermanent),
		"outcome": promtest.OneOf(metrics.PollOK, metrics.PollError),
	}, 13) // 5 families x 2 label values + 3 without labels: fixed, whatever the work
	t.Logf("claimed %v, failed %v; applied %d loadlog + %d result events, mean lag %.1fms; check-in %.2fs ago; %d series",
		f.Value("vclq_bridge_rows_claimed_total"), f.Value("vclq_bridge_rows_failed_total"), loadlogs, results,
		1000*lagSum/float64(max(1, loadlogs+results)), f.Value("vclq_bridge_checkin_age_seconds"), n)
}

// TestBridgeReadinessChecks: each readiness check names its failure.
func TestBridgeReadinessChecks(t *testing.T) {
	j := testutil.StartVCLJetStream(t, e2eStreams())
	unreachable, err := sql.Open("mysql", "root@tcp(127.0.0.1:1)/vcl?timeout=1s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unreachable.Close() })
	ctx := context.Background()
	b := &Bridge{db: unreachable, js: j.JS}
	steps := []struct {
		name   string
		before func()
		want   []string
	}{
		{"no bridge consumer yet", func() {}, []string{"nats: ok", "consumer: consumer vclq-bridge on VCL_EVENTS", "database: ping:"}},
		{"database unreachable", func() {
			if _, err := EnsureConsumer(ctx, j.JS, time.Second); err != nil {
				t.Fatal(err)
			}
		}, []string{"nats: ok", "consumer: ok", "database: ping:"}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			s.before()
			ok, report := health.Run(ctx, time.Second, b.HealthChecks()...)
			t.Logf("ready %v: %q", ok, report)
			if ok {
				t.Errorf("ready, want not")
			}
			for _, w := range s.want {
				if !strings.Contains(report, w) {
					t.Errorf("report %q lacks %q", report, w)
				}
			}
		})
	}
}

func TestDBErrorClass(t *testing.T) {
	cases := []struct {
		name  string
		err   error
		class string
		ok    bool
	}{
		{"nil", nil, "", false},
		{"duplicate key", fmt.Errorf("apply: %w", &mysql.MySQLError{Number: 1062}), metrics.DBPermanent, true},
		{"lock wait", fmt.Errorf("apply: %w", &mysql.MySQLError{Number: 1205}), metrics.DBTransient, true},
		{"bad connection", fmt.Errorf("poll: %w", driver.ErrBadConn), metrics.DBTransient, true},
		{"dial", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, metrics.DBTransient, true},
		{"NATS down", errors.New("NATS is RECONNECTING: nothing is claimed until it is back"), "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			class, ok := dbErrorClass(c.err)
			if class != c.class || ok != c.ok {
				t.Errorf("dbErrorClass(%v) = %q %v, want %q %v", c.err, class, ok, c.class, c.ok)
			}
		})
	}
}
