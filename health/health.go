// Package health serves liveness (/healthz) and readiness (/readyz) of a process.
//
// Liveness answers 200 while the process runs. Readiness runs the process's checks
// (NATS connected, consumer bound, configuration valid, the database reachable...),
// each bounded by a short timeout, and answers 200 when all pass, else 503 with one
// line per check: "name: ok" or "name: <reason>".
package health

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Check is one readiness condition: Fn returns nil when it holds, or the reason.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// DefaultTimeout bounds each readiness check.
const DefaultTimeout = 2 * time.Second

// Live answers 200 "ok".
func Live() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
}

// List returns the checks to run; a process whose component is still starting can
// return a different list later.
type List func() []Check

// Static is a fixed list of checks.
func Static(checks ...Check) List { return func() []Check { return checks } }

// Ready runs the checks of list in order, each within timeout (<= 0:
// DefaultTimeout), and answers 200 when all pass, 503 otherwise; the body lists
// every check's verdict. An empty list is ready.
func Ready(timeout time.Duration, list List) http.Handler {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var checks []Check
		if list != nil {
			checks = list()
		}
		ok, body := Run(r.Context(), timeout, checks...)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write([]byte(body))
	})
}

// Run runs the checks and reports whether all passed, with one line per check.
func Run(ctx context.Context, timeout time.Duration, checks ...Check) (ok bool, report string) {
	var b strings.Builder
	ok = true
	for _, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err := c.Fn(cctx)
		cancel()
		if err != nil {
			ok = false
			fmt.Fprintf(&b, "%s: %s\n", c.Name, oneLine(err.Error()))
			continue
		}
		fmt.Fprintf(&b, "%s: ok\n", c.Name)
	}
	return ok, b.String()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
