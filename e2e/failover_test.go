package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/internal/natscluster"
	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// A 3-node JetStream cluster with R3 streams: during a run of 100 reservations over 12
// slots on 3 `vclq worker` processes, the meta leader, the VCL_REQUESTS leader, the
// vclq-workers consumer leader and the vclq_slots leader are killed in turn (each
// restarted). Nothing is lost or run twice, every step event is there, and the
// handlers' journal (marker files per slot, across processes) sees no two jobs on a
// slot at once.
func TestClusterFailoverLosesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c, err := natscluster.Start(ctx, t.TempDir(), natscluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	const ackWait, leaseTTL = 10 * time.Second, 5 * time.Second
	if _, err := streams.Apply(ctx, js, streams.Options{Replicas: 3, AckWait: ackWait, MaxDeliver: 10}); err != nil {
		t.Fatal(err)
	}

	journal := filepath.Join(t.TempDir(), "journal")
	startSimWorkers(t, c.URLs(), 3, journal, "--lease-ttl", leaseTTL.String(), "--ack-wait", ackWait.String(), "--max-deliver", "10", "--replicas", "3")
	waitWorkers(t, ctx, js, 3)

	// 100 reservations, published over the run.
	seqs, published := publishSim(t, ctx, js, 100, 20_000)

	// Kill each leader in turn and restart it.
	leaders := []struct {
		what string
		find func() int
	}{
		{"meta leader", c.MetaLeader},
		{"VCL_REQUESTS leader", func() int { return c.StreamLeader(messages.StreamRequests) }},
		{"vclq-workers consumer leader", func() int { return c.ConsumerLeader(messages.StreamRequests, messages.ConsumerWorkers) }},
		{"vclq_slots leader", func() int { return c.StreamLeader("KV_" + messages.BucketSlotLeases) }},
	}
	time.Sleep(2 * time.Second)
	for _, l := range leaders {
		i := -1
		for deadline := time.Now().Add(30 * time.Second); i < 0 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			i = l.find()
		}
		if i < 0 {
			t.Fatalf("no %s to kill", l.what)
		}
		t.Logf("killing the %s (server %d)", l.what, i)
		c.Kill(i)
		time.Sleep(3 * time.Second)
		if err := c.Restart(i); err != nil {
			t.Fatalf("restart server %d: %v", i, err)
		}
		time.Sleep(2 * time.Second)
	}
	<-published
	if t.Failed() {
		return
	}

	checkSimRun(t, ctx, c.URLs(), seqs, journal)
}

// checkSimRun waits (bounded) until every reservation of seqs has a result and checks
// the run of simulated jobs: exactly one result each, its step's begin and end events
// when it succeeded, no step begun after the result, and in the handlers' journal no
// reservation that ran to its end twice and no two jobs on one slot at once.
// readAllEvents reads every stored event in stream order, on a new connection to
// urls, with direct gets (next by subject): any replica answers them, so the read
// does not wait for a stream or consumer leader of a cluster still settling after a
// restart (an ordered consumer did, for minutes at times).
func readAllEvents(ctx context.Context, urls string, fn func(eventlog.Event) error) error {
	nc, err := nats.Connect(urls, nats.Timeout(5*time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	for seq := uint64(1); ; {
		req := fmt.Sprintf(`{"seq":%d,"next_by_subj":%q}`, seq, messages.SubjectEventsAll)
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := nc.RequestWithContext(rctx, "$JS.API.DIRECT.GET."+messages.StreamEvents, []byte(req))
		cancel()
		if err != nil {
			return fmt.Errorf("direct get from seq %d: %w", seq, err)
		}
		if st := m.Header.Get("Status"); st == "404" {
			return nil
		} else if st != "" {
			return fmt.Errorf("direct get from seq %d: status %s %s", seq, st, m.Header.Get("Description"))
		}
		got, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil || got < seq {
			return fmt.Errorf("direct get from seq %d: sequence %q", seq, m.Header.Get("Nats-Sequence"))
		}
		ev := eventlog.Decode(m.Header.Get("Nats-Subject"), m.Data)
		ev.Seq = got
		if err := fn(ev); err != nil {
			return err
		}
		seq = got + 1
	}
}

// startSimWorkers runs n `vclq worker` processes with the simulated handler writing
// to journal, until the test ends; it returns them.
func startSimWorkers(t *testing.T, urls string, n int, journal string, args ...string) []*exec.Cmd {
	t.Helper()
	var cmds []*exec.Cmd
	for i := range n {
		cmd := exec.Command(vclqBin, append([]string{"worker", "--nats", urls, "--id", fmt.Sprintf("sim%d-%d", i, time.Now().UnixNano()), "--concurrency", "4",
			"--handler", "sim:work=300ms..900ms,journal=" + journal, "--heartbeat", "1s"}, args...)...)
		cmd.Env = append(os.Environ(), "VCLQ_LOG_LEVEL=warn")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		cmds = append(cmds, cmd)
	}
	return cmds
}

// waitWorkers waits until n workers are in the registry.
func waitWorkers(t *testing.T, ctx context.Context, js jetstream.JetStream, n int) {
	t.Helper()
	registry, err := js.KeyValue(ctx, messages.BucketWorkers)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		keys, _ := registry.Keys(ctx)
		if len(keys) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d workers registered within 30 s", len(keys), n)
		}
	}
}

// publishSim publishes n simulated `new` requests over 12 slots, one every 150 ms; a
// publish that fails (an election) is retried with the same Nats-Msg-Id, so it is
// stored once. The map (reservation → stream sequence) is complete when done closes.
func publishSim(t *testing.T, ctx context.Context, js jetstream.JetStream, n int, base int64) (map[int64]uint64, <-chan struct{}) {
	seqs := map[int64]uint64{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			r := simhandler.Request(messages.KindNew, base+int64(i), int64(1+i%12))
			data, _ := json.Marshal(r)
			for try := 0; ; try++ {
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				ack, err := js.Publish(pctx, r.Kind.Subject(), data, jetstream.WithMsgID(r.MsgID()))
				pcancel()
				if err == nil {
					seqs[r.Reservation.ID] = ack.Sequence
					break
				}
				if try > 60 || ctx.Err() != nil {
					t.Errorf("publish reservation %d: %v", r.Reservation.ID, err)
					return
				}
				time.Sleep(250 * time.Millisecond)
			}
			time.Sleep(150 * time.Millisecond)
		}
	}()
	return seqs, done
}

func checkSimRun(t *testing.T, ctx context.Context, urls string, seqs map[int64]uint64, journal string) {
	t.Helper()
	n := len(seqs)
	type seen struct {
		results       []*messages.Result
		begins, ends  int
		beginAfterRes int
	}
	got := map[int64]*seen{}
	for res := range seqs {
		got[res] = &seen{}
	}
	deadline := time.Now().Add(4 * time.Minute)
	for {
		for _, s := range got {
			*s = seen{}
		}
		rctx, rcancel := context.WithTimeout(ctx, time.Minute)
		// A fresh connection for every attempt: one whose server was restarted may be
		// left without JetStream responders for a while.
		err := readAllEvents(rctx, urls, func(ev eventlog.Event) error {
			switch {
			case ev.Loadlog != nil:
				s := got[ev.Loadlog.ReservationID]
				if s == nil || ev.Loadlog.RequestSeq != seqs[ev.Loadlog.ReservationID] || ev.Loadlog.Name != messages.LoadStatusCheck {
					return nil
				}
				switch ev.Loadlog.Phase {
				case messages.PhaseBegin:
					s.begins++
					if len(s.results) > 0 {
						s.beginAfterRes++
					}
				case messages.PhaseEnd:
					s.ends++
				}
			case ev.Result != nil:
				if s := got[ev.Result.ReservationID]; s != nil && ev.Result.RequestSeq == seqs[ev.Result.ReservationID] {
					s.results = append(s.results, ev.Result)
				}
			}
			return nil
		})
		rcancel()
		if err != nil {
			// A cluster may still be settling after a restart.
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			t.Logf("reading events: %v (retrying)", err)
			time.Sleep(2 * time.Second)
			continue
		}
		done := 0
		for _, s := range got {
			if len(s.results) > 0 {
				done++
			}
		}
		if done == n || time.Now().After(deadline) {
			t.Logf("%d of %d reservations have a result", done, n)
			break
		}
		time.Sleep(2 * time.Second)
	}
	outcomes := map[string]int{}
	lost, twice, missingEvents := 0, 0, 0
	for res, s := range got {
		switch {
		case len(s.results) == 0:
			lost++
			t.Errorf("reservation %d (seq %d): no result", res, seqs[res])
			continue
		case len(s.results) > 1:
			twice++
			t.Errorf("reservation %d: %d results", res, len(s.results))
		}
		r := s.results[0]
		outcomes[string(r.Outcome)+"/"+r.ErrorCode]++
		if r.Outcome == messages.OutcomeSuccess && (s.begins < 1 || s.ends < 1) {
			missingEvents++
			t.Errorf("reservation %d: %d begin and %d end events for its step", res, s.begins, s.ends)
		}
		if s.beginAfterRes > 0 {
			t.Errorf("reservation %d: a step began after its result", res)
		}
		if r.Outcome != messages.OutcomeSuccess && r.ErrorCode != worker.CodeSuperseded {
			t.Errorf("reservation %d: %+v", res, r)
		}
	}
	rep, err := simhandler.ReadJournal(journal)
	if err != nil {
		t.Fatal(err)
	}
	ranTwice := 0
	for res, k := range rep.OKByReservation {
		if k > 1 {
			ranTwice++
			t.Errorf("reservation %d ran to its end %d times", res, k)
		}
	}
	t.Logf("outcomes %v; lost %d, results twice %d, ran twice %d, missing step events %d, lease overlaps %d, journal %d begins",
		outcomes, lost, twice, ranTwice, missingEvents, len(rep.Overlaps), rep.Begins)
	if len(rep.Overlaps) > 0 {
		t.Errorf("two jobs on one slot at once: %s", strings.Join(rep.Overlaps, "; "))
	}
}
