package health_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/health"
)

func TestReady(t *testing.T) {
	okCheck := health.Check{Name: "nats", Fn: func(context.Context) error { return nil }}
	bad := health.Check{Name: "database", Fn: func(context.Context) error { return errors.New("ping:\nrefused") }}
	slow := health.Check{Name: "slow", Fn: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
	cases := []struct {
		name   string
		checks []health.Check
		code   int
		body   string
	}{
		{"none", nil, http.StatusOK, ""},
		{"all ok", []health.Check{okCheck}, http.StatusOK, "nats: ok\n"},
		{"one fails", []health.Check{okCheck, bad}, http.StatusServiceUnavailable, "nats: ok\ndatabase: ping: refused\n"},
		{"timeout", []health.Check{slow}, http.StatusServiceUnavailable, "slow: context deadline exceeded\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			start := time.Now()
			health.Ready(50*time.Millisecond, health.Static(c.checks...)).ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
			if rec.Code != c.code || rec.Body.String() != c.body {
				t.Errorf("%d %q, want %d %q", rec.Code, rec.Body.String(), c.code, c.body)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
	rec := httptest.NewRecorder()
	health.Live().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Body.String(), "ok") {
		t.Errorf("healthz %d %q", rec.Code, rec.Body.String())
	}
}
