package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// Queue sizes.
const (
	queueMessages    = 20000 // per throughput run
	queueConcurrency = 64    // job slots of the pool in the throughput run
	queueLatencyRuns = 300   // sequential requests for the dispatch latency
	queueRounds      = 3     // interleaved raw/pool rounds; medians are reported
	// queueSyncedMessages per round on the server that fsyncs every write (slower).
	queueSyncedMessages = 3000
)

// Queue measures the worker pool against raw JetStream on one embedded server in this
// process: the raw publish and pull+ack rates, the pool's rate with a no-op handler
// (decode, slot lease create/delete, result event, ack), and the latency from publish
// to handler start with idle workers.
func Queue(ctx context.Context, w io.Writer) error {
	j, err := startJetStream(ctx, "queue", streams.Options{AckWait: 30 * time.Second})
	if err != nil {
		return err
	}
	defer j.close()
	nc, js := j.nc, j.js
	synced, err := startJetStreamSync(ctx, "queue-sync", streams.Options{AckWait: 30 * time.Second}, true)
	if err != nil {
		return err
	}
	defer synced.close()
	var syncedRates []float64

	// Interleaved rounds; the median of each measure is reported (the machine is
	// shared and noisy).
	var rawPubs, rawPulls, rawConsumes, poolPubs, poolRates, unorderedRates, meteredRates, meteredRatios, rawCPU, poolCPU, meteredCPU []float64
	for round := range queueRounds {
		_, rc, err := rawRates(ctx, js, queueMessages, 100+round, true)
		if err != nil {
			return fmt.Errorf("raw consume: %w", err)
		}
		rawConsumes = append(rawConsumes, rc)
		c0 := cpuTime()
		rp, rr, err := rawRates(ctx, js, queueMessages, round, false)
		if err != nil {
			return fmt.Errorf("raw: %w", err)
		}
		c1 := cpuTime()
		pp, pr, err := poolRate(ctx, js, nc, queueMessages, round, poolPlain)
		if err != nil {
			return fmt.Errorf("pool: %w", err)
		}
		c2 := cpuTime()
		_, ur, err := poolRate(ctx, js, nc, queueMessages, round, poolUnordered)
		if err != nil {
			return fmt.Errorf("pool without slot ordering: %w", err)
		}
		unorderedRates = append(unorderedRates, ur)
		c3 := cpuTime()
		_, mr, err := poolRate(ctx, js, nc, queueMessages, round, poolMetered)
		if err != nil {
			return fmt.Errorf("pool with metrics: %w", err)
		}
		meteredCPU = append(meteredCPU, float64((cpuTime()-c3).Microseconds())/queueMessages)
		meteredRates = append(meteredRates, mr)
		_, sr, err := poolRate(ctx, synced.js, synced.nc, queueSyncedMessages, round, poolPlain)
		if err != nil {
			return fmt.Errorf("pool on a server with sync_interval always: %w", err)
		}
		syncedRates = append(syncedRates, sr)
		meteredRatios = append(meteredRatios, mr/pr)
		rawPubs, rawPulls, poolPubs, poolRates = append(rawPubs, rp), append(rawPulls, rr), append(poolPubs, pp), append(poolRates, pr)
		rawCPU = append(rawCPU, float64((c1-c0).Microseconds())/queueMessages)
		poolCPU = append(poolCPU, float64((c2-c1).Microseconds())/queueMessages)
	}
	rawPub, rawPull, rawConsume, poolPub, poolRate := median(rawPubs), median(rawPulls), median(rawConsumes), median(poolPubs), median(poolRates)
	decodeCPU, err := decodeCost(queueMessages)
	if err != nil {
		return err
	}
	var p50s, p99s []float64
	for round := range queueRounds {
		lat, err := dispatchLatency(ctx, js, nc, queueLatencyRuns, round)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		p50s = append(p50s, float64(percentile(lat, 50))/1e6)
		p99s = append(p99s, float64(percentile(lat, 99))/1e6)
	}
	p50, p99 := median(p50s), median(p99s)
	ratio := poolRate / max(rawPull, rawConsume)
	fmt.Fprintf(w, "## Queue: worker pool vs raw JetStream\n\n")
	fmt.Fprintf(w, "One embedded nats-server (file storage, %s) and the clients in the same process; %d messages per run, "+
		"%d interleaved raw/pool rounds, medians shown (pool rounds: %s jobs/s; %s µs CPU per job).\n\n", syncLabel(), queueMessages, queueRounds, rates(poolRates), rates(poolCPU))
	fmt.Fprintf(w, "| measure | rate |\n|---|---|\n")
	fmt.Fprintf(w, "| raw JetStream async publish | %.0f msg/s |\n", rawPub)
	fmt.Fprintf(w, "| raw JetStream pull (Fetch 256) + ack | %.0f msg/s |\n", rawPull)
	fmt.Fprintf(w, "| raw JetStream Consume (prefetch 500) + ack | %.0f msg/s |\n", rawConsume)
	fmt.Fprintf(w, "| request publish (async, with Nats-Msg-Id) | %.0f msg/s |\n", poolPub)
	fmt.Fprintf(w, "| worker pool, no-op handler, %d slots | %.0f jobs/s |\n", queueConcurrency, poolRate)
	unordered := median(unorderedRates)
	fmt.Fprintf(w, "| the same pool without per-slot ordering (measurement only) | %.0f jobs/s |\n", unordered)
	fmt.Fprintf(w, "| the same pool with metrics on, /metrics scraped every second | %.0f jobs/s |\n", median(meteredRates))
	fmt.Fprintf(w, "| the same pool on a server with `sync_interval: always` (%d jobs per round) | %.0f jobs/s |\n", queueSyncedMessages, median(syncedRates))
	fmt.Fprintf(w, "\nPer-slot ordering (admission: one compare-and-set write of the slot's record per job when this worker wrote it last, else a leader read and the write) "+
		"keeps **%.0f%%** of the unordered pool's rate in the same run (rounds without it: %s jobs/s).\n", 100*poolRate/unordered, rates(unorderedRates))
	fmt.Fprintf(w, "\nWith `sync_interval: always` (every stored write fsynced before its ack; deployments/nats and docs/deploy.md "+
		"choose it) the pool keeps **%.0f%%** of its rate on the default 2-minute interval (rounds: %s jobs/s): far above a VCL "+
		"site's few requests a minute.\n", 100*median(syncedRates)/poolRate, rates(syncedRates))
	fmt.Fprintf(w, "\nWith metrics on (package metrics: a registry, every job's counters and histograms, the queue gauges refreshed "+
		"every 5 s, /metrics served and scraped every second) the pool keeps **%.0f%%** of its rate without metrics: the median "+
		"of the rounds' ratios, each round running both pools back to back (rounds with metrics: %s jobs/s; ratios %s%%). "+
		"CPU time per job (the steadier measure): %.0f µs with metrics, %.0f µs without (%+.0f%%).\n",
		100*median(meteredRatios), rates(meteredRates), rates(scale(meteredRatios, 100)), median(meteredCPU), median(poolCPU),
		100*(median(meteredCPU)/median(poolCPU)-1))
	fmt.Fprintf(w, "\nCPU time of the whole process (server and clients) per message, publish included: raw (Fetch) %.0f µs, pool %.0f µs "+
		"(a measure that the machine's other load disturbs less than rates do); of the pool's, messages.DecodeRequest alone "+
		"takes %.0f µs per request.\n", median(rawCPU), median(poolCPU), decodeCPU)
	fmt.Fprintf(w, "\nPool / the faster raw pull+ack: **%.0f%%** (target ≥ 50%%: %s). Each pool job is a pull of only as many "+
		"messages as free slots (no prefetch), a strict decode and validation of the request, a KV lease create (synchronous: its "+
		"revision is the fencing token), a result event publish (synchronous, deduplicated), a confirmed ack and a KV lease delete: "+
		"four more stored messages and round trips per job than raw pull+ack, which stores none and waits for none. In a CPU "+
		"profile of this suite, messages.DecodeRequest (strict shape check, decode, validation) is about a third of the pool's CPU, "+
		"the server's stores most of the rest.\n\n",
		100*ratio, verdict(ratio >= 0.5))
	fmt.Fprintf(w, "Publish-to-handler-start latency, idle pool (decode, lease create, then the handler), %d rounds of %d sequential "+
		"requests: median p50 %.2f ms, median p99 %.2f ms (p99 per round: %s ms; target p99 < 10 ms: %s).\n\n",
		queueRounds, queueLatencyRuns, p50, p99, ratesMS(p99s), verdict(p99 < 10))
	return nil
}

// stallWait is how long an async publish waits while the client has its maximum of
// unacknowledged publishes out (default 200 ms): with sync_interval always, every
// store waits for an fsync and the default gives up.
const stallWait = 30 * time.Second

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// rawRates publishes n messages asynchronously to a work-queue stream, then pulls
// (Fetch of 256, or Consume with its default prefetch) and acks them all; it returns
// both rates.
func rawRates(ctx context.Context, js jetstream.JetStream, n, round int, consume bool) (pub, pull float64, err error) {
	name := fmt.Sprintf("BENCH_RAW_%d", round)
	subject := fmt.Sprintf("bench.raw.%d", round)
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: name, Subjects: []string{subject}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
	})
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = js.DeleteStream(context.WithoutCancel(ctx), name) }()
	payload := make([]byte, 900) // about a request's size
	start := time.Now()
	for range n {
		if _, err := js.PublishAsync(subject, payload, jetstream.WithStallWait(stallWait)); err != nil {
			return 0, 0, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	pub = float64(n) / time.Since(start).Seconds()
	c, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 100000})
	if err != nil {
		return 0, 0, err
	}
	start = time.Now()
	if consume {
		var got atomic.Int64
		done := make(chan struct{})
		cc, err := c.Consume(func(m jetstream.Msg) {
			_ = m.Ack()
			if got.Add(1) == int64(n) {
				close(done)
			}
		})
		if err != nil {
			return 0, 0, err
		}
		defer cc.Stop()
		select {
		case <-done:
		case <-time.After(5 * time.Minute):
			return 0, 0, errors.New("raw consume stalled")
		}
		return pub, float64(n) / time.Since(start).Seconds(), nil
	}
	got := 0
	for got < n {
		b, err := c.Fetch(min(256, n-got), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return 0, 0, err
		}
		k := 0
		for m := range b.Messages() {
			if err := m.Ack(); err != nil {
				return 0, 0, err
			}
			k++
		}
		if k == 0 {
			return 0, 0, errors.New("raw pull stalled")
		}
		got += k
	}
	return pub, float64(n) / time.Since(start).Seconds(), nil
}

// noop counts jobs; it optionally reports the dispatch latency of each.
type noop struct {
	done    atomic.Int64
	started chan time.Duration
}

func (h *noop) Handle(_ context.Context, job *worker.Job) (messages.Result, error) {
	if h.started != nil {
		h.started <- time.Since(job.Request.Request.Modified)
	}
	h.done.Add(1)
	return messages.Result{RequestState: messages.StateReserved, ComputerState: messages.StateReserved}, nil
}

func publishRequests(ctx context.Context, js jetstream.JetStream, n int, base int64) error {
	for i := range n {
		r := simhandler.Request(messages.KindNew, base+int64(i), int64(1+i%4096))
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if _, err := js.PublishAsync(r.Kind.Subject(), data, jetstream.WithMsgID(r.MsgID()), jetstream.WithStallWait(stallWait)); err != nil {
			return err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Pool variants of poolRate.
type poolVariant int

const (
	poolPlain     poolVariant = iota // as configured by default, metrics off
	poolUnordered                    // without per-slot ordering (measurement only)
	poolMetered                      // metrics on, served and scraped every second
)

// poolRate queues n requests, then runs a pool with a no-op handler until the queue
// is empty and every job settled; it returns the publish and processing rates.
func poolRate(ctx context.Context, js jetstream.JetStream, nc *nats.Conn, n, round int, variant poolVariant) (pub, rate float64, err error) {
	start := time.Now()
	base := int64(1_000_000 * (round + 1))
	switch variant {
	case poolUnordered:
		base += 500_000
	case poolMetered:
		base += 250_000
	}
	if err := publishRequests(ctx, js, n, base); err != nil {
		return 0, 0, err
	}
	pub = float64(n) / time.Since(start).Seconds()
	h := &noop{}
	cfg := worker.Config{ID: fmt.Sprintf("bench-%d", round), Concurrency: queueConcurrency, DisableSweeper: true, SkipSlotOrdering: variant == poolUnordered}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if variant == poolMetered {
		stop, err := meteredPool(rctx, &cfg)
		if err != nil {
			return 0, 0, err
		}
		defer stop()
	}
	p, err := worker.New(js, nc, h, cfg, zerolog.Nop())
	if err != nil {
		return 0, 0, err
	}
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- p.Run(rctx) }()
	defer func() { cancel(); <-done }()
	cons, err := js.Consumer(ctx, messages.StreamRequests, messages.ConsumerWorkers)
	if err != nil {
		return 0, 0, err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if h.done.Load() >= int64(n) {
			info, err := cons.Info(ctx)
			if err != nil {
				return 0, 0, err
			}
			if info.NumAckPending == 0 && info.NumPending == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("pool did not finish %d jobs in 5 minutes (%d done)", n, h.done.Load())
		}
		time.Sleep(2 * time.Millisecond)
	}
	return pub, float64(n) / time.Since(start).Seconds(), nil
}

// dispatchLatency publishes requests one at a time to an idle pool and measures the
// time from just before the publish to the handler's start.
func dispatchLatency(ctx context.Context, js jetstream.JetStream, nc *nats.Conn, runs, round int) ([]time.Duration, error) {
	h := &noop{started: make(chan time.Duration, 1)}
	p, err := worker.New(js, nc, h, worker.Config{ID: fmt.Sprintf("bench-latency-%d", round), Concurrency: 8, DisableSweeper: true}, zerolog.Nop())
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(200 * time.Millisecond) // let the pool issue its first pull
	var lat []time.Duration
	for i := range runs {
		r := simhandler.Request(messages.KindNew, int64(100_000_000*(round+1)+i), int64(1+i%64))
		r.Request.Modified = time.Now()
		data, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		if _, err := js.Publish(ctx, r.Kind.Subject(), data, jetstream.WithMsgID(r.MsgID())); err != nil {
			return nil, err
		}
		select {
		case d := <-h.started:
			lat = append(lat, d)
		case <-time.After(10 * time.Second):
			return nil, errors.New("no dispatch within 10s")
		}
		time.Sleep(2 * time.Millisecond) // idle between requests
	}
	return lat, nil
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func rates(v []float64) string { return joined("%.0f", v) }

// joined formats each value with format, comma separated.
func joined(format string, v []float64) string {
	var b []byte
	for i, x := range v {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = fmt.Appendf(b, format, x)
	}
	return string(b)
}

// seconds converts durations to seconds.
func seconds(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = d.Seconds()
	}
	return out
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// decodeCost is the CPU time of messages.DecodeRequest per request, in µs.
func decodeCost(n int) (float64, error) {
	data, err := json.Marshal(simhandler.Request(messages.KindNew, 1, 1))
	if err != nil {
		return 0, err
	}
	c0 := cpuTime()
	for range n {
		if _, err := messages.DecodeRequest(data); err != nil {
			return 0, err
		}
	}
	return float64((cpuTime() - c0).Microseconds()) / float64(n), nil
}

func ratesMS(v []float64) string { return joined("%.2f", v) }
