package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/streams"
)

// A rolling upgrade: during 100 reservations each of 3 `vclq worker` processes in turn
// gets SIGTERM (graceful: in-flight jobs finish or are handed back within the grace)
// and is started again. Nothing is lost or run twice.
func TestRollingUpgradeLosesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	j := testutil.StartVCLJetStream(t, streams.Options{AckWait: 10 * time.Second, MaxDeliver: 10})
	journal := filepath.Join(t.TempDir(), "journal")
	// Jobs of 1-3 s against a 1 s grace: a stopping worker finishes some and hands the
	// others back (they run again elsewhere, from the start).
	args := []string{"--lease-ttl", "5s", "--ack-wait", "10s", "--max-deliver", "10", "--shutdown-grace", "1s",
		"--handler", "sim:work=1s..3s,journal=" + journal}
	workers := startSimWorkers(t, j.URL, 3, journal, args...)
	waitWorkers(t, ctx, j.JS, 3)
	seqs, published := publishSim(t, ctx, j.JS, 100, 30_000)

	time.Sleep(2 * time.Second)
	for i, w := range workers {
		stopped := time.Now()
		if err := w.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := waitExit(w, 30*time.Second); err != nil {
			t.Fatalf("worker %d after SIGTERM: %v", i, err)
		}
		t.Logf("worker %d stopped in %s", i, time.Since(stopped).Round(time.Millisecond))
		// The upgraded binary: the same one, started again.
		workers[i] = startSimWorkers(t, j.URL, 1, journal, args...)[0]
		time.Sleep(2 * time.Second)
	}
	<-published
	if t.Failed() {
		return
	}
	checkSimRun(t, ctx, j.URL, seqs, journal)
}

// waitExit waits for a process to exit, bounded; an exit code other than 0 is an error.
func waitExit(c *exec.Cmd, within time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		_ = c.Process.Signal(os.Kill)
		return context.DeadlineExceeded
	}
}
