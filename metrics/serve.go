package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/health"
)

// Server timeouts: a scrape or probe is small; a slow client must not hold a
// connection.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	shutdownTimeout   = 5 * time.Second
	scrapeTimeout     = 20 * time.Second
)

// Mux returns the handler of /metrics (reg), /healthz and /readyz (checks).
func Mux(reg *prometheus.Registry, checks health.List) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.InstrumentMetricHandler(reg,
		promhttp.HandlerFor(reg, promhttp.HandlerOpts{Timeout: scrapeTimeout, ErrorHandling: promhttp.ContinueOnError})))
	mux.Handle("GET /healthz", health.Live())
	mux.Handle("GET /readyz", health.Ready(health.DefaultTimeout, checks))
	return mux
}

// Serve listens on addr (host:port; port 0 picks one) and serves Mux(reg, checks) in
// the background until ctx ends, then shuts the server down (at most 5s). It returns
// the address it listens on and a function that waits for the server to stop. A
// listen error is returned at once.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, log zerolog.Logger, checks health.List) (string, func() error, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{
		Handler:           Mux(reg, checks),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close()
		}
	}()
	log.Info().Str("addr", ln.Addr().String()).Msg("metrics and health endpoints listening (/metrics, /healthz, /readyz)")
	wait := sync.OnceValue(func() error {
		<-stopped
		return <-done
	})
	return ln.Addr().String(), wait, nil
}
