package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/flow"
	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// Flows measures end-to-end throughput of new reservations through the whole system
// (NATS, two `vclq worker` processes, vcsim hosts, guests) against the same flow
// calls driven directly at the same concurrency, and the per-request overhead: the
// processing time not spent inside hypervisor and guest calls (the steps).
func Flows(ctx context.Context, w io.Writer) error {
	// The shape; VCLQ_BENCH_FLOWS="hosts,slots,requests" shrinks it for a quick look.
	hosts, slotsPerHost, requests := 10, 5, 200
	const workers, perWorker = 2, 8
	if v := os.Getenv("VCLQ_BENCH_FLOWS"); v != "" {
		if _, err := fmt.Sscanf(v, "%d,%d,%d", &hosts, &slotsPerHost, &requests); err != nil {
			return fmt.Errorf("VCLQ_BENCH_FLOWS=%q: want hosts,slots,requests: %w", v, err)
		}
	}
	dir, err := os.MkdirTemp("", "vclq-bench-flows-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	log := zerolog.Nop()
	lab, err := devlab.Start(ctx, devlab.Config{Hosts: hosts, SlotsPerHost: slotsPerHost, Dir: filepath.Join(dir, "site"),
		Subnet: netip.MustParsePrefix("198.51.100.128/25"), Logger: &log})
	if err != nil {
		return err
	}
	defer lab.Close()
	guests := "namespace guests (real sshd, iptables, useradd)"
	if lab.Guests == nil {
		guests = "simulated guests (" + lab.GuestsWhy + ")"
	}
	boot := flow.BootWait{Timeout: 2 * time.Minute, Interval: 100 * time.Millisecond}
	reqs := func(base int64) []*messages.Request {
		var out []*messages.Request
		for i := range requests {
			slot := lab.Slots[i%len(lab.Slots)]
			// Alternate images so every request is a real load.
			img := lab.Images[(i/len(lab.Slots))%len(lab.Images)]
			out = append(out, lab.Request(devlab.RequestSpec{Kind: messages.KindNew, Slot: slot, Image: img, Reservation: base + int64(i), Request: base + int64(i)}))
		}
		return out
	}

	// Direct: the flows' hypervisor and guest calls, without queue, leases or events.
	fmt.Fprintf(os.Stderr, "flows: direct calls...\n")
	b0, t0 := machineCPU()
	direct, err := runDirect(ctx, lab, boot, reqs(100000), workers*perWorker)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	b1, t1 := machineCPU()
	direct.busy = busyShare(b0, t0, b1, t1)
	fmt.Fprintf(os.Stderr, "flows: direct %d in %s (%d failed); now through vclq...\n", requests, direct.wall.Round(time.Millisecond), direct.failed)
	// Through vclq.
	sys, err := runSystem(ctx, lab, dir, boot, reqs(200000), workers, perWorker)
	if err != nil {
		return fmt.Errorf("system: %w", err)
	}

	fmt.Fprintf(w, "## Flows: %d new reservations over %d slots on %d hosts\n\n", requests, len(lab.Slots), hosts)
	fmt.Fprintf(w, "Guests: %s. vclq: %d `vclq worker` processes × %d job slots on an embedded nats-server; "+
		"direct: the same flow handler called by %d goroutines (no queue, lease or events), one slot at a time per VM.\n\n", guests, workers, perWorker, workers*perWorker)
	fmt.Fprintf(w, "| run | wall | reservations/s | failed | machine CPU busy |\n|---|---|---|---|---|\n")
	fmt.Fprintf(w, "| direct calls | %.1fs | %.2f | %d | %.0f%% |\n", direct.wall.Seconds(), float64(requests)/direct.wall.Seconds(), direct.failed, 100*direct.busy)
	fmt.Fprintf(w, "| vclq end to end | %.1fs | %.2f | %d | %.0f%% |\n\n", sys.wall.Seconds(), float64(requests)/sys.wall.Seconds(), sys.failed, 100*sys.busy)
	for _, e := range direct.errors {
		fmt.Fprintf(w, "A failed direct call: `%s`\n\n", e)
	}
	for _, e := range sys.errors {
		fmt.Fprintf(w, "A failed reservation: `%s`\n\n", e)
	}
	ratio := direct.wall.Seconds() / sys.wall.Seconds()
	fmt.Fprintf(w, "Throughput of vclq / direct: **%.0f%%** (target ≥ 80%%).\n\n", 100*ratio)
	fmt.Fprintf(w, "Per request, processing = result time − first step's start; overhead = processing − time inside steps "+
		"(hypervisor and guest calls):\n\n| | p50 | p99 |\n|---|---|---|\n")
	fmt.Fprintf(w, "| end to end (publish → result, includes queueing) | %s | %s |\n", pct(sys.e2e, 50), pct(sys.e2e, 99))
	fmt.Fprintf(w, "| processing | %s | %s |\n", pct(sys.processing, 50), pct(sys.processing, 99))
	fmt.Fprintf(w, "| overhead | %s | %s |\n", pct(sys.overhead, 50), pct(sys.overhead, 99))
	fmt.Fprintf(w, "| overhead / processing | %.2f%% | %.2f%% |\n", 100*quantileF(sys.share, 50), 100*quantileF(sys.share, 99))
	fmt.Fprintf(w, "| overhead / end to end | %.2f%% | %.2f%% |\n\n", 100*quantileF(sys.shareE2E, 50), 100*quantileF(sys.shareE2E, 99))
	fmt.Fprintf(w, "Target: overhead under 5%% of end-to-end time. Dispatch and lease acquisition happen before the first "+
		"step and are not in 'processing'; they show in the throughput ratio instead.\n\n")
	if len(sys.worst) > 0 {
		fmt.Fprintf(w, "The request with the largest overhead (%s), its events from its publication:\n\n```\n", sys.worstOverhead.Round(time.Millisecond))
		sort.SliceStable(sys.worst, func(i, j int) bool { return sys.worst[i].at.Before(sys.worst[j].at) })
		for _, e := range sys.worst {
			fmt.Fprintf(w, "%9s  %-28s %s\n", e.at.Sub(sys.worstPublished).Round(time.Millisecond), e.what, e.worker)
		}
		fmt.Fprintf(w, "```\n\n")
	}
	fmt.Fprintf(w, "Where the time goes (mean per step):\n\n| step | direct | vclq |\n|---|---|---|\n")
	for _, name := range []string{messages.LoadStatusCheck, messages.LoadImageBlade, messages.LoadDoesImageExist, messages.LoadStartLoad,
		messages.LoadTransferVM, messages.LoadVMSetupConfig, messages.LoadStartVM, messages.LoadMachineBooted, messages.LoadImageComplete, messages.LoadNodeReady} {
		fmt.Fprintf(w, "| %s | %s | %s |\n", name, direct.steps.mean(name).Round(time.Millisecond), sys.steps.mean(name).Round(time.Millisecond))
	}
	return nil
}

// stepTimes sums step durations by loadlog name.
type stepTimes struct {
	mu  sync.Mutex
	sum map[string]time.Duration
	n   map[string]int
}

func newStepTimes() *stepTimes {
	return &stepTimes{sum: map[string]time.Duration{}, n: map[string]int{}}
}

func (s *stepTimes) add(name string, d time.Duration) {
	s.mu.Lock()
	s.sum[name] += d
	s.n[name]++
	s.mu.Unlock()
}

func (s *stepTimes) mean(name string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[name] == 0 {
		return 0
	}
	return s.sum[name] / time.Duration(s.n[name])
}

// Loadlog records the durations of finished steps (the direct run's event sink).
func (s *stepTimes) Loadlog(_ context.Context, e worker.StepEvent) error {
	if e.Phase == messages.PhaseEnd || e.Phase == messages.PhaseFail {
		s.add(e.Name, e.Duration)
	}
	return nil
}

type flowRun struct {
	steps                     *stepTimes
	errors                    []string // a few failure reasons
	wall                      time.Duration
	busy                      float64 // share of the machine's CPU time that was busy
	failed                    int
	e2e, processing, overhead []time.Duration
	share, shareE2E           []float64
	// The request with the largest overhead: its events, for the report.
	worst          []flowEvent
	worstOverhead  time.Duration
	worstPublished time.Time
}

// flowEvent is one loadlog or result event of a request, as the bench saw it.
type flowEvent struct {
	at     time.Time
	what   string
	worker string
}

func runDirect(ctx context.Context, lab *devlab.Lab, boot flow.BootWait, reqs []*messages.Request, conc int) (flowRun, error) {
	h, closeHosts, err := lab.Handler(zerolog.Nop(), nil, boot)
	if err != nil {
		return flowRun{}, err
	}
	defer closeHosts(context.Background())
	locks := map[int64]*sync.Mutex{}
	for _, r := range reqs {
		if locks[r.Computer.ID] == nil {
			locks[r.Computer.ID] = &sync.Mutex{}
		}
	}
	work := make(chan *messages.Request, len(reqs))
	for _, r := range reqs {
		work <- r
	}
	close(work)
	var mu sync.Mutex
	run := flowRun{steps: newStepTimes()}
	start := time.Now()
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				l := locks[r.Computer.ID]
				l.Lock()
				_, err := h.Handle(ctx, &worker.Job{Request: r, Seq: uint64(r.Reservation.ID), Delivery: 1, MaxDeliver: 1, Events: run.steps, Worker: "direct"})
				l.Unlock()
				if err != nil {
					mu.Lock()
					run.failed++
					if len(run.errors) < 3 {
						run.errors = append(run.errors, err.Error())
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	run.wall = time.Since(start)
	return run, nil
}

func runSystem(ctx context.Context, lab *devlab.Lab, dir string, boot flow.BootWait, reqs []*messages.Request, workers, perWorker int) (flowRun, error) {
	j, err := startJetStream(ctx, "flows", streams.Options{AckWait: 30 * time.Second, MaxDeliver: 5})
	if err != nil {
		return flowRun{}, err
	}
	defer j.close()
	nc, js, srv := j.nc, j.js, j.server
	exe, err := os.Executable()
	if err != nil {
		return flowRun{}, err
	}
	setup := lab.Setup()
	setup.BootTimeout, setup.BootInterval = flow.Duration(boot.Timeout), flow.Duration(boot.Interval)
	for i := range workers {
		cfg, _ := json.Marshal(map[string]any{"nats": map[string]string{"url": srv.URL()}, "id": fmt.Sprintf("bench-%d", i),
			"concurrency": perWorker, "lease_ttl": "10s", "ack_wait": "30s", "max_deliver": 5, "flow": setup})
		p := filepath.Join(dir, fmt.Sprintf("worker-%d.json", i))
		if err := os.WriteFile(p, cfg, 0o600); err != nil {
			return flowRun{}, err
		}
		cmd := exec.CommandContext(ctx, exe, "worker", "--config", p)
		cmd.Env = append(os.Environ(), "VCLQ_LOG_LEVEL=error")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return flowRun{}, err
		}
		defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	}

	// Collect events: step durations and first-step times per request, and results.
	type reqStat struct {
		published, first, done time.Time
		steps                  time.Duration
		ok                     bool
		err                    string
		timeline               []flowEvent
	}
	var mu sync.Mutex
	stats := map[uint64]*reqStat{}
	get := func(seq uint64) *reqStat {
		if stats[seq] == nil {
			stats[seq] = &reqStat{}
		}
		return stats[seq]
	}
	steps := newStepTimes()
	results := make(chan struct{}, len(reqs))
	sub, err := nc.Subscribe("vcl.events.>", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		if l, err := messages.DecodeLoadlog(m.Data); err == nil {
			s := get(l.RequestSeq)
			what := l.Name + " " + string(l.Phase)
			if l.Phase == messages.PhaseFail && l.Info != "" {
				what += ": " + l.Info
			}
			s.timeline = append(s.timeline, flowEvent{at: l.Time, what: what, worker: l.Worker})
			if l.Phase == messages.PhaseBegin && (s.first.IsZero() || l.Time.Before(s.first)) {
				s.first = l.Time
			}
			if l.Phase == messages.PhaseEnd || l.Phase == messages.PhaseFail {
				s.steps += time.Duration(l.DurationMS) * time.Millisecond
				steps.add(l.Name, time.Duration(l.DurationMS)*time.Millisecond)
			}
		} else if r, err := messages.DecodeResult(m.Data); err == nil {
			s := get(r.RequestSeq)
			s.timeline = append(s.timeline, flowEvent{at: r.Time, what: "result " + string(r.Outcome), worker: r.Worker})
			if s.done.IsZero() {
				s.done, s.ok, s.err = r.Time, r.Outcome == messages.OutcomeSuccess, r.Error
				results <- struct{}{}
			}
		}
	})
	if err != nil {
		return flowRun{}, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	// Let the workers register before the clock starts.
	time.Sleep(2 * time.Second)

	start := time.Now()
	b0, t0 := machineCPU()
	for _, r := range reqs {
		data, _ := json.Marshal(r)
		ack, err := js.Publish(ctx, r.Kind.Subject(), data, jetstream.WithMsgID(r.MsgID()))
		if err != nil {
			return flowRun{}, err
		}
		mu.Lock()
		get(ack.Sequence).published = time.Now()
		mu.Unlock()
	}
	timeout := time.After(20 * time.Minute)
	for range reqs {
		select {
		case <-results:
		case <-timeout:
			return flowRun{}, fmt.Errorf("results missing after 20 minutes")
		case <-ctx.Done():
			return flowRun{}, ctx.Err()
		}
	}
	run := flowRun{wall: time.Since(start), steps: steps}
	b1, t1 := machineCPU()
	run.busy = busyShare(b0, t0, b1, t1)
	mu.Lock()
	defer mu.Unlock()
	for _, s := range stats {
		if !s.ok {
			run.failed++
			if len(run.errors) < 3 {
				run.errors = append(run.errors, s.err)
			}
			continue
		}
		proc := s.done.Sub(s.first)
		over := max(0, proc-s.steps)
		run.e2e = append(run.e2e, s.done.Sub(s.published))
		run.processing = append(run.processing, proc)
		run.overhead = append(run.overhead, over)
		if over > run.worstOverhead {
			run.worstOverhead, run.worst = over, s.timeline
			run.worstPublished = s.published
		}
		if proc > 0 {
			run.share = append(run.share, float64(over)/float64(proc))
			run.shareE2E = append(run.shareE2E, float64(over)/float64(s.done.Sub(s.published)))
		}
	}
	return run, nil
}

func pct(d []time.Duration, q int) string {
	if len(d) == 0 {
		return "n/a"
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, len(s)*q/100)].Round(100 * time.Microsecond).String()
}

func quantileF(f []float64, q int) float64 {
	if len(f) == 0 {
		return 0
	}
	s := append([]float64(nil), f...)
	sort.Float64s(s)
	return s[min(len(s)-1, len(s)*q/100)]
}

// machineCPU reads the machine's busy and total CPU time from /proc/stat (all CPUs,
// in clock ticks), to tell how saturated the machine was during a run.
func machineCPU() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// busyShare is the share of the machine's CPU time that was busy between two
// machineCPU readings.
func busyShare(b0, t0, b1, t1 uint64) float64 {
	if t1 <= t0 {
		return 0
	}
	return float64(b1-b0) / float64(t1-t0)
}
