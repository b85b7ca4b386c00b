package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// `vclq dev` with simulated guests (as on a machine without root or the guest
// packages) runs its whole demo — lifecycles and the image capture, whose guest shuts
// itself down — in seconds, prints no vcsim server noise, and closes with hints that
// name the binary actually run.
func TestDevDemoSimulatedGuests(t *testing.T) {
	bin := vclqBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "dev", "--hosts", "1", "--slots", "2", "--guests", "none")
	cmd.Env = workerEnv()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var (
		mu    sync.Mutex
		lines []string
	)
	hinted := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
			if strings.Contains(sc.Text(), "events --follow") {
				hinted <- time.Since(start)
			}
		}
	}()
	var took time.Duration
	select {
	case took = <-hinted:
	case <-time.After(60 * time.Second):
		t.Error("no closing hint within 60s")
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	waitErr := cmd.Wait()
	mu.Lock()
	out := strings.Join(lines, "\n")
	mu.Unlock()
	t.Logf("demo and hints after %s; exit after SIGTERM: %v; %d lines", took.Round(time.Millisecond), waitErr, len(lines))
	if t.Failed() || testing.Verbose() {
		t.Logf("output:\n%s", out)
	}
	if waitErr != nil {
		t.Errorf("vclq dev did not exit cleanly on SIGTERM: %v", waitErr)
	}
	if took > 30*time.Second {
		t.Errorf("demo took %s, want under 30s", took)
	}
	m := regexp.MustCompile(`demo: (\d+) requests, (\d+) succeeded, (\d+) failed`).FindStringSubmatch(out)
	if m == nil || m[1] != m[2] || m[3] != "0" {
		t.Errorf("demo summary %q, want every request succeeded", m)
	}
	if !regexp.MustCompile(`← reservation \d+: image success`).MatchString(out) {
		t.Error("the image capture did not succeed")
	}
	if n := strings.Count(out, "TLS handshake error"); n > 0 {
		t.Errorf("%d \"TLS handshake error\" lines reached the output", n)
	}
	if !strings.Contains(out, bin+" status") || !strings.Contains(out, bin+" events --follow") {
		t.Errorf("closing hints do not name the binary run (%s)", bin)
	}
}
