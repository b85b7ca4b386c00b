package bench

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/vclq/vclq/health"
	"github.com/vclq/vclq/metrics"
	"github.com/vclq/vclq/worker"
)

// meteredPool turns the pool's metrics on (cfg.Metrics), serves them on a loopback
// port and scrapes /metrics every second until ctx ends; stop waits for both.
func meteredPool(ctx context.Context, cfg *worker.Config) (stop func(), err error) {
	reg := metrics.NewRegistry()
	if cfg.Metrics, err = metrics.NewWorker(reg); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	addr, wait, err := metrics.Serve(ctx, "127.0.0.1:0", reg, zerolog.Nop(), health.Static())
	if err != nil {
		cancel()
		return nil, err
	}
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
			if err != nil {
				return
			}
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}()
	return func() { cancel(); <-scraped; _ = wait() }, nil
}

// scale multiplies each value by k.
func scale(v []float64, k float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = k * x
	}
	return out
}
