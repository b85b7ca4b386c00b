package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/internal/natscluster"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

// TestClusterStartTogether is issue 9 (d): on a fresh 3-node cluster, 3 `vclq worker`
// (replicas: 3), 2 `vclq bridge` (no --replicas, as the systemd unit runs it) and
// `vclq nats init --replicas 3` started at the same moment are all up within 30 s,
// and the site is R3 afterwards, also after one bridge restarted.
func TestClusterStartTogether(t *testing.T) {
	if err := bt.Reachable(context.Background()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("MariaDB at %s unreachable under CI: %v", bt.Addr(), err)
		}
		t.Skipf("MariaDB at %s unreachable: %v", bt.Addr(), err)
	}
	bin := vclqBinary(t)
	ctx := context.Background()
	d, err := bt.Create(ctx, bt.SchemaOwn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Drop)
	if err := bt.LoadSite(ctx, d.SQL, 0); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := natscluster.Start(cctx, t.TempDir(), natscluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	urls := c.URLs()

	start := time.Now()
	var procs []*proc
	for i := range 3 {
		procs = append(procs, startProc(t, bin, fmt.Sprintf("worker%d", i+1), "worker started", nil,
			"worker", "--nats", urls, "--id", fmt.Sprintf("w%d", i+1), "--heartbeat", "300ms", "--replicas", "3",
			"--handler", "sim:work=100ms..300ms"))
	}
	bridgeArgs := []string{"bridge", "--nats", urls, "--management-node", "100", "--interval", "200ms"}
	bridgeEnv := []string{"VCLQ_BRIDGE_MYSQL=" + d.DSN}
	for i := range 2 {
		procs = append(procs, startProc(t, bin, fmt.Sprintf("bridge%d", i+1), "bridge started", bridgeEnv, bridgeArgs...))
	}
	initDone := make(chan error, 1)
	var initOut []byte
	go func() {
		cmd := exec.Command(bin, "nats", "init", "--replicas", "3", "--nats", urls)
		var err error
		initOut, err = cmd.CombinedOutput()
		initDone <- err
	}()

	deadline := start.Add(30 * time.Second)
	select {
	case err := <-initDone:
		t.Logf("nats init --replicas 3 exited (%v) after %s:\n%s", err, time.Since(start).Round(time.Millisecond), initOut)
		if err != nil {
			t.Errorf("nats init --replicas 3: %v", err)
		}
	case <-time.After(time.Until(deadline)):
		t.Errorf("nats init --replicas 3 still running after 30 s")
	}
	up := 0
	for _, p := range procs {
		if err := p.waitReady(deadline); err != nil {
			t.Errorf("%s: %v", p.name, err)
			continue
		}
		up++
		t.Logf("%s up after %s", p.name, p.readyAt.Sub(start).Round(time.Millisecond))
	}
	t.Logf("%d of %d processes up, nats init done, in %s", up, len(procs), time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		t.FailNow()
	}
	js := clusterJS(t, urls)
	requireSiteReplicas(t, js, 3)

	// A restarted bridge converges again (with its default of 1 replica) and lowers
	// nothing.
	b := procs[3]
	b.stop(t)
	restart := time.Now()
	b2 := startProc(t, bin, "bridge1-restarted", "bridge started", bridgeEnv, bridgeArgs...)
	if err := b2.waitReady(restart.Add(30 * time.Second)); err != nil {
		t.Fatalf("restarted bridge: %v", err)
	}
	t.Logf("bridge restarted and up in %s", b2.readyAt.Sub(restart).Round(time.Millisecond))
	if n := b2.count(`"asset"`); n == 0 {
		t.Errorf("the restarted bridge logged no difference (it expects R1 on an R3 site)")
	} else {
		t.Logf("restarted bridge logged %d differences, left as is", n)
	}
	requireSiteReplicas(t, js, 3)
}

// proc is a vclq child process with its JSON log in a file.
type proc struct {
	name, log, ready string
	cmd              *exec.Cmd
	done             chan error
	readyAt          time.Time
}

// startProc starts `vclq args...`; it is SIGTERMed (then killed) when the test ends,
// and its log is shown if the test failed.
func startProc(t *testing.T, bin, name, ready string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, ready: ready, log: filepath.Join(t.TempDir(), name+".log"), done: make(chan error, 1)}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.Env = append(append(os.Environ(), "VCLQ_LOG_FORMAT=json"), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait(); f.Close() }()
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() { p.stop(t) })
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("--- log of %s (tail) ---\n%s", name, b)
		}
	})
	return p
}

// stop SIGTERMs the process and waits (bounded) until it exited.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitReady waits until the process logged its readiness line, until deadline; a
// process that exits first fails.
func (p *proc) waitReady(deadline time.Time) error {
	for {
		if p.count(`"message":"`+p.ready+`"`) > 0 {
			p.readyAt = time.Now()
			return nil
		}
		select {
		case err := <-p.done:
			p.done <- err
			return fmt.Errorf("exited before %q: %v", p.ready, err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q in its log by the deadline", p.ready)
		}
	}
}

// count is how many log lines contain s.
func (p *proc) count(s string) int {
	b, _ := os.ReadFile(p.log)
	return strings.Count(string(b), s)
}

func clusterJS(t *testing.T, urls string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(urls)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// requireSiteReplicas waits (bounded) until every stream and bucket is configured
// for n replicas and hosted by n servers, and every consumer on them (the bridge's
// included) by n servers.
func requireSiteReplicas(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	d := streams.Define(streams.Options{})
	names := []string{}
	for _, s := range d.Streams {
		names = append(names, s.Name)
	}
	for _, b := range d.Buckets {
		names = append(names, "KV_"+b.Bucket)
	}
	var checked int
	testutil.WaitFor(t, 30*time.Second, 250*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		checked = 0
		for _, name := range names {
			s, err := js.Stream(ctx, name)
			if err != nil {
				return fmt.Errorf("stream %s: %w", name, err)
			}
			i := s.CachedInfo()
			if got := hosts(i.Cluster); i.Config.Replicas != n || got != n {
				return fmt.Errorf("stream %s: configured R%d, on %d servers; want R%d", name, i.Config.Replicas, got, n)
			}
			checked++
			for ci := range s.ListConsumers(ctx).Info() {
				if got := hosts(ci.Cluster); got != n {
					return fmt.Errorf("consumer %s > %s: on %d servers; want %d", name, ci.Name, got, n)
				}
				checked++
			}
		}
		return nil
	})
	t.Logf("%d streams, buckets and consumers are R%d (%s among them)", checked, n, messages.ConsumerBridge)
}

func hosts(ci *jetstream.ClusterInfo) int {
	if ci == nil || ci.Leader == "" {
		return 0
	}
	n := 1
	for _, p := range ci.Replicas {
		if p != nil && !p.Offline {
			n++
		}
	}
	return n
}
