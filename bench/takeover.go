package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// Takeover sizes: short lease and ack timings (the takeover time scales with them).
const (
	takeoverTrials   = 8
	takeoverLeaseTTL = 2 * time.Second
	takeoverAckWait  = 3 * time.Second
)

// Takeover measures, with real `vclq worker` processes, the time from kill -9 of the
// node running a job to the other node's admission of the same request (its first
// step), beside the lease TTL and AckWait that bound it.
func Takeover(ctx context.Context, w io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	j, err := startJetStream(ctx, "takeover", streams.Options{AckWait: takeoverAckWait, MaxDeliver: 5})
	if err != nil {
		return err
	}
	defer j.close()
	kv, err := j.js.KeyValue(ctx, messages.BucketSlotLeases)
	if err != nil {
		return err
	}
	var took []time.Duration
	for trial := range takeoverTrials {
		d, err := takeoverTrial(ctx, self, j, kv, trial)
		if err != nil {
			return fmt.Errorf("trial %d: %w", trial, err)
		}
		took = append(took, d)
	}
	slices.Sort(took)
	fmt.Fprintf(w, "## Takeover after kill -9\n\n")
	fmt.Fprintf(w, "Two `vclq worker` processes (simulated handler) on one embedded server; node A runs a job, is killed with "+
		"SIGKILL, and node B admits the same request (its first step). Lease TTL %s, AckWait %s; %d trials.\n\n",
		takeoverLeaseTTL, takeoverAckWait, takeoverTrials)
	fmt.Fprintf(w, "| measure | time |\n|---|---|\n")
	fmt.Fprintf(w, "| kill → other node's first step, median | %.2f s |\n", percentile(took, 50).Seconds())
	fmt.Fprintf(w, "| kill → other node's first step, p99 (max of %d) | %.2f s |\n", takeoverTrials, percentile(took, 99).Seconds())
	fmt.Fprintf(w, "| bound: max(lease TTL, AckWait) + 1 s poll | %.2f s |\n", (max(takeoverLeaseTTL, takeoverAckWait) + time.Second).Seconds())
	fmt.Fprintf(w, "| lease TTL + AckWait | %.2f s |\n\n", (takeoverLeaseTTL + takeoverAckWait).Seconds())
	fmt.Fprintf(w, "The redelivery waits for AckWait since the dead node's last InProgress (sent every AckWait/3) and the slot for "+
		"the lease TTL since its last renewal (every TTL/3): takeover lies between 2/3 and all of the larger of the two "+
		"(docs/architecture.md, \"Per-slot ordering\"). With the defaults (AckWait 60 s, TTL 30 s) that is 40–61 s.\n\n")
	return nil
}

func takeoverTrial(ctx context.Context, self string, j *jetStream, kv jetstream.KeyValue, trial int) (time.Duration, error) {
	start := func(id string) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, self, "worker", "--nats", j.server.URL(), "--id", id, "--concurrency", "1",
			"--handler", "sim:work=60s", "--lease-ttl", takeoverLeaseTTL.String(), "--ack-wait", takeoverAckWait.String(),
			"--max-deliver", "5", "--heartbeat", "500ms")
		cmd.Env = append(os.Environ(), "VCLQ_LOG_LEVEL=error")
		cmd.Stderr = io.Discard
		return cmd, cmd.Start()
	}
	stop := func(c *exec.Cmd) {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	computer := int64(500 + trial)
	a, err := start(fmt.Sprintf("takeover-a%d", trial))
	if err != nil {
		return 0, err
	}
	defer stop(a)
	r := simhandler.Request(messages.KindNew, int64(60_000+trial), computer)
	data, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	if _, err := j.js.Publish(ctx, r.Kind.Subject(), data, jetstream.WithMsgID(r.MsgID())); err != nil {
		return 0, err
	}
	key := worker.SlotServedKey(computer)
	admitted := func(node string) (bool, error) {
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		var rec worker.SlotRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return false, err
		}
		return rec.Worker == node, nil
	}
	if err := wait.Until(ctx, 30*time.Second, 10*time.Millisecond, func(context.Context) (bool, error) { return admitted(fmt.Sprintf("takeover-a%d", trial)) }); err != nil {
		return 0, fmt.Errorf("node A never started the job: %w", err)
	}
	b, err := start(fmt.Sprintf("takeover-b%d", trial))
	if err != nil {
		return 0, err
	}
	defer stop(b)
	time.Sleep(time.Second) // B is up and pulling
	killed := time.Now()
	if err := a.Process.Signal(syscall.SIGKILL); err != nil {
		return 0, err
	}
	if err := wait.Until(ctx, time.Minute, 10*time.Millisecond, func(context.Context) (bool, error) { return admitted(fmt.Sprintf("takeover-b%d", trial)) }); err != nil {
		return 0, fmt.Errorf("node B never took the job over: %w", err)
	}
	took := time.Since(killed)
	// Leave nothing for the next trial's nodes.
	stop(b)
	st, err := j.js.Stream(ctx, messages.StreamRequests)
	if err != nil {
		return 0, err
	}
	return took, st.Purge(ctx)
}
