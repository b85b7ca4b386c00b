package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// These tests run the built vclq binary as separate worker processes against an
// embedded nats-server.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// vclqBinary builds ./cmd/vclq once per test binary (without -race: the processes
// are the system under test, the race detector runs on the in-process tests).
func vclqBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs worker processes; skipped with -short")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vclq-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "vclq")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type workerProc struct {
	id   string
	cmd  *exec.Cmd
	log  string
	done chan error
}

// startWorkers starts n `vclq worker` processes; they are SIGTERMed (then killed) when
// the test ends, and their logs are shown if it failed.
func startWorkers(t *testing.T, url string, n int, args ...string) []*workerProc {
	t.Helper()
	var procs []*workerProc
	for i := range n {
		procs = append(procs, startWorkersNamed(t, url, fmt.Sprintf("w%d", i+1), args...))
	}
	return procs
}

// startWorkersNamed starts one `vclq worker` process with the given id.
func startWorkersNamed(t *testing.T, url, id string, args ...string) *workerProc {
	t.Helper()
	bin := vclqBinary(t)
	logPath := filepath.Join(t.TempDir(), id+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"worker", "--nats", url, "--id", id, "--heartbeat", "300ms"}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "VCLQ_LOG_FORMAT=json")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &workerProc{id: id, cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); f.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			t.Logf("--- log of worker %s (tail) ---\n%s", id, b)
		}
	})
	return p
}

func publishRequests(t *testing.T, j *testutil.JetStream, reqs []*messages.Request) map[uint64]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seqs := map[uint64]int64{}
	for _, r := range reqs {
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := j.JS.Publish(ctx, r.Kind.Subject(), data, jetstream.WithMsgID(r.MsgID()))
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		seqs[ack.Sequence] = r.Reservation.ID
	}
	return seqs
}

// allResults reads every result event; it fails on any result that does not decode.
func allResults(t *testing.T, j *testutil.JetStream) []*messages.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := j.JS.OrderedConsumer(ctx, messages.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{messages.SubjectResultPrefix + ">"}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*messages.Result
	for uint64(len(out)) < info.NumPending {
		b, err := c.Fetch(int(info.NumPending)-len(out), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range b.Messages() {
			n++
			r, err := messages.DecodeResult(m.Data())
			if err != nil {
				t.Fatalf("result does not decode: %v", err)
			}
			out = append(out, r)
		}
		if n == 0 {
			t.Fatalf("read %d of %d results", len(out), info.NumPending)
		}
	}
	return out
}

func resultCount(t *testing.T, j *testutil.JetStream) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := j.JS.Stream(ctx, messages.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(messages.SubjectResultPrefix+">"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	return n
}

// checkExactlyOnce checks one successful result per published request and no other.
func checkExactlyOnce(t *testing.T, j *testutil.JetStream, seqs map[uint64]int64) []*messages.Result {
	t.Helper()
	rs := allResults(t, j)
	seen := map[uint64]int{}
	for _, r := range rs {
		seen[r.RequestSeq]++
		if res, ok := seqs[r.RequestSeq]; !ok || res != r.ReservationID {
			t.Errorf("result for unknown request seq %d reservation %d", r.RequestSeq, r.ReservationID)
		}
		if r.Outcome != messages.OutcomeSuccess {
			t.Errorf("reservation %d: %s %s: %s", r.ReservationID, r.Outcome, r.ErrorCode, r.Error)
		}
	}
	for seq, n := range seen {
		if n != 1 {
			t.Errorf("request seq %d: %d results", seq, n)
		}
	}
	if len(rs) != len(seqs) || len(seen) != len(seqs) {
		t.Errorf("%d results for %d distinct requests, want exactly %d", len(rs), len(seen), len(seqs))
	}
	return rs
}

func checkJournal(t *testing.T, path string, minOK int) simhandler.Report {
	t.Helper()
	rep, err := simhandler.ReadJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Overlaps) > 0 {
		t.Errorf("%d moments with two handlers on one slot: %v", len(rep.Overlaps), rep.Overlaps)
	}
	if rep.Ends["ok"] < minOK {
		t.Errorf("journal: %d successful handler runs, want at least %d", rep.Ends["ok"], minOK)
	}
	return rep
}

// Three worker processes share one queue: 300 requests over 50 slots complete exactly
// once, and no two handlers ever run on one slot at the same moment.
func TestWorkerProcessesShareOneQueue(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{AckWait: 3 * time.Second, MaxDeliver: 5})
	journal := filepath.Join(t.TempDir(), "journal")
	procs := startWorkers(t, j.URL, 3, "--concurrency", "8", "--lease-ttl", "2s", "--ack-wait", "3s", "--max-deliver", "5",
		"--handler", "sim:work=10ms..60ms,events=false,journal="+journal)
	const n, slots = 300, 50
	var reqs []*messages.Request
	for i := range n {
		reqs = append(reqs, simhandler.Request(messages.KindNew, int64(10000+i), int64(1+i%slots)))
	}
	seqs := publishRequests(t, j, reqs)
	testutil.WaitFor(t, 120*time.Second, 100*time.Millisecond, func() error {
		if c := resultCount(t, j); c < n {
			return fmt.Errorf("%d of %d results", c, n)
		}
		return nil
	})
	rs := checkExactlyOnce(t, j, seqs)
	byWorker := map[string]int{}
	for _, r := range rs {
		byWorker[r.Worker]++
	}
	if len(byWorker) != 3 {
		t.Errorf("work spread %v: want all 3 workers used", byWorker)
	}
	rep := checkJournal(t, journal, n)
	t.Logf("results by worker %v; handler runs %d (ok %d), stale markers %d", byWorker, rep.Begins, rep.Ends["ok"], rep.Stale)
	// SIGTERM: every worker stops cleanly.
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("worker %s exited with %v after SIGTERM", p.id, err)
			}
			p.done <- err
		case <-time.After(20 * time.Second):
			t.Errorf("worker %s did not stop within 20s of SIGTERM", p.id)
		}
	}
}

// kill -9 of a worker holding jobs: its requests are completed by the others within
// lease TTL + ack wait (plus their work), none is lost, none gets two results.
func TestWorkerKill9JobsCompletedByOthers(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{AckWait: 3 * time.Second, MaxDeliver: 5})
	journal := filepath.Join(t.TempDir(), "journal")
	procs := startWorkers(t, j.URL, 3, "--concurrency", "4", "--lease-ttl", "2s", "--ack-wait", "3s", "--max-deliver", "5",
		"--handler", "sim:work=1s..2s,events=false,journal="+journal)
	const n = 36
	var reqs []*messages.Request
	for i := range n {
		reqs = append(reqs, simhandler.Request(messages.KindNew, int64(20000+i), int64(1+i)))
	}
	seqs := publishRequests(t, j, reqs)

	// Wait until the victim runs jobs, as its registry entry shows.
	victim := procs[0]
	kv, err := j.JS.KeyValue(context.Background(), messages.BucketWorkers)
	if err != nil {
		t.Fatal(err)
	}
	var held []worker.ActiveJob
	testutil.WaitFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		e, err := kv.Get(context.Background(), worker.RegistryKey(victim.id))
		if err != nil {
			return err
		}
		var r worker.Registration
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return err
		}
		held = held[:0]
		for _, a := range r.Active {
			if a.State == worker.JobRunning {
				held = append(held, a)
			}
		}
		if len(held) < 2 {
			return fmt.Errorf("victim runs %d jobs", len(held))
		}
		return nil
	})
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-victim.done
	victim.done <- nil

	// The victim's jobs are finished by the others within lease TTL + ack wait + their
	// work (2s) + slack for this shared machine.
	const bound = 2*time.Second + 3*time.Second + 2*time.Second + 8*time.Second
	heldSeqs := map[uint64]bool{}
	for _, a := range held {
		heldSeqs[a.Seq] = true
	}
	testutil.WaitFor(t, bound, 100*time.Millisecond, func() error {
		done := 0
		for _, r := range allResults(t, j) {
			if heldSeqs[r.RequestSeq] {
				done++
			}
		}
		if done < len(heldSeqs) {
			return fmt.Errorf("%d of the victim's %d jobs completed %s after the kill", done, len(heldSeqs), time.Since(killed).Round(time.Millisecond))
		}
		return nil
	})
	testutil.WaitFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		if c := resultCount(t, j); c < n {
			return fmt.Errorf("%d of %d results", c, n)
		}
		return nil
	})
	rs := checkExactlyOnce(t, j, seqs)
	for _, r := range rs {
		if heldSeqs[r.RequestSeq] && (r.Worker == victim.id || r.Deliveries < 2) {
			t.Errorf("victim's request seq %d: completed by %s on delivery %d", r.RequestSeq, r.Worker, r.Deliveries)
		}
	}
	rep := checkJournal(t, journal, n)
	t.Logf("victim held %d jobs; handler runs %d (ok %d), stale markers taken over %d", len(held), rep.Begins, rep.Ends["ok"], rep.Stale)
}

// A worker process that crashes (os.Exit in the handler) on a request's last delivery:
// another worker's sweeper moves the request to the dead letters with a failed result.
func TestWorkerCrashOnLastDeliveryIsDeadLettered(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{AckWait: 2 * time.Second, MaxDeliver: 1})
	common := []string{"--concurrency", "2", "--lease-ttl", "2s", "--ack-wait", "2s", "--max-deliver", "1"}
	crasher := startWorkers(t, j.URL, 1, append(common, "--handler", "sim:events=false,crash=reservations:11")...)[0]
	seqs := publishRequests(t, j, []*messages.Request{simhandler.Request(messages.KindNew, 11, 5)})
	select {
	case err := <-crasher.done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("crashing worker exited with %v, want exit status 3", err)
		}
		crasher.done <- err
	case <-time.After(20 * time.Second):
		t.Fatal("worker did not crash")
	}
	// A healthy worker (its own id) sweeps the abandoned last delivery.
	startWorkersNamed(t, j.URL, "healthy", append(common, "--handler", "sim:events=false")...)
	testutil.WaitFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if c := resultCount(t, j); c < 1 {
			return errors.New("no result yet")
		}
		return nil
	})
	rs := allResults(t, j)
	if len(rs) != 1 || rs[0].Outcome != messages.OutcomeFailed || rs[0].ErrorCode != worker.CodeMaxDeliver || rs[0].ReservationID != 11 {
		t.Fatalf("results %+v", rs)
	}
	for seq := range seqs {
		if rs[0].RequestSeq != seq {
			t.Errorf("result for seq %d, want %d", rs[0].RequestSeq, seq)
		}
	}
	ctx := context.Background()
	dl, err := j.JS.Stream(ctx, messages.StreamDeadLetters)
	if err != nil {
		t.Fatal(err)
	}
	m, err := dl.GetLastMsgForSubject(ctx, messages.DeadLetterSubject(messages.KindNew, 11))
	if err != nil {
		t.Fatalf("dead letter: %v", err)
	}
	if m.Header.Get(messages.HeaderDeliveries) != "1" || m.Header.Get(messages.HeaderOrigSubject) != "vcl.new" {
		t.Errorf("dead letter headers %v", m.Header)
	}
	testutil.WaitFor(t, 5*time.Second, 100*time.Millisecond, func() error {
		rq, err := j.JS.Stream(ctx, messages.StreamRequests)
		if err != nil {
			return err
		}
		info, err := rq.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return fmt.Errorf("%d requests left", info.State.Msgs)
		}
		return nil
	})
}

// A reclaim cancels the reservation's earlier job running in another worker process
// (vclq.control.cancel.<reservation>): the new gets a failed result with code
// cancelled and is not retried; the reclaim then takes the slot and succeeds.
func TestWorkerReclaimCancelsJobInAnotherProcess(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{AckWait: 3 * time.Second, MaxDeliver: 5})
	common := []string{"--concurrency", "1", "--lease-ttl", "2s", "--ack-wait", "3s", "--max-deliver", "5"}
	startWorkersNamed(t, j.URL, "hanger", append(common, "--handler", "sim:events=false,hang=kinds:new")...)
	newSeqs := publishRequests(t, j, []*messages.Request{simhandler.Request(messages.KindNew, 77, 5)})
	kv, err := j.JS.KeyValue(context.Background(), messages.BucketWorkers)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		e, err := kv.Get(context.Background(), worker.RegistryKey("hanger"))
		if err != nil {
			return err
		}
		var r worker.Registration
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return err
		}
		if len(r.Active) != 1 || r.Active[0].State != worker.JobRunning {
			return fmt.Errorf("active %+v", r.Active)
		}
		return nil
	})
	startWorkersNamed(t, j.URL, "reclaimer", append(common, "--handler", "sim:events=false")...)
	reclaimSeqs := publishRequests(t, j, []*messages.Request{simhandler.Request(messages.KindReclaim, 77, 5)})
	testutil.WaitFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if c := resultCount(t, j); c < 2 {
			return fmt.Errorf("%d results", c)
		}
		return nil
	})
	for _, r := range allResults(t, j) {
		switch {
		case newSeqs[r.RequestSeq] != 0:
			if r.Outcome != messages.OutcomeFailed || r.ErrorCode != worker.CodeCancelled || r.Worker != "hanger" {
				t.Errorf("new: %+v, want failed/cancelled by hanger", r)
			}
		case reclaimSeqs[r.RequestSeq] != 0:
			if r.Outcome != messages.OutcomeSuccess || r.Worker != "reclaimer" {
				t.Errorf("reclaim: %+v, want success by reclaimer", r)
			}
		default:
			t.Errorf("unexpected result %+v", r)
		}
	}
}
