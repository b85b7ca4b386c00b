package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/natscluster"
	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// Failover sizes.
const (
	failoverTrials  = 3
	failoverEvery   = 50 * time.Millisecond // one request published per interval
	failoverRestart = 5 * time.Second       // the killed server stays down this long
)

// Failover measures, on a 3-node cluster of in-process servers with R3 streams and a
// pool connected to all three, the time from killing the VCL_REQUESTS stream leader to
// the first result of a request published after the kill, while requests keep coming.
func Failover(ctx context.Context, w io.Writer) error {
	dir, err := os.MkdirTemp("", "vclq-bench-failover-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	c, err := natscluster.Start(ctx, dir, natscluster.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if _, err := streams.Apply(ctx, js, streams.Options{Replicas: 3, AckWait: 10 * time.Second, MaxDeliver: 10}); err != nil {
		return err
	}
	h, err := simhandler.New("work=10ms..30ms")
	if err != nil {
		return err
	}
	p, err := worker.New(js, nc, h, worker.Config{ID: "bench-failover", Concurrency: 8, LeaseTTL: 5 * time.Second, DisableSweeper: true}, zerolog.Nop())
	if err != nil {
		return err
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = p.Run(rctx) }()

	// Results as they are stored: request sequence → arrival.
	var mu sync.Mutex
	arrived := map[uint64]time.Time{}
	sub, err := nc.Subscribe(messages.SubjectResultPrefix+">", func(m *nats.Msg) {
		if r, err := messages.DecodeResult(m.Data); err == nil {
			mu.Lock()
			arrived[r.RequestSeq] = time.Now()
			mu.Unlock()
		}
	})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()

	// A steady stream of requests; publish times by sequence.
	published := map[uint64]time.Time{}
	var pubMu sync.Mutex
	go func() {
		for i := 0; rctx.Err() == nil; i++ {
			r := simhandler.Request(messages.KindNew, int64(70_000+i), int64(1+i%32))
			data, _ := json.Marshal(r)
			pctx, cancel := context.WithTimeout(rctx, 10*time.Second)
			ack, err := js.Publish(pctx, r.Kind.Subject(), data, jetstream.WithMsgID(r.MsgID()))
			cancel()
			if err == nil {
				pubMu.Lock()
				published[ack.Sequence] = time.Now()
				pubMu.Unlock()
			}
			time.Sleep(failoverEvery)
		}
	}()
	time.Sleep(3 * time.Second) // steady state

	var took []time.Duration
	for trial := range failoverTrials {
		leader, err := c.WaitStreamLeader(ctx, messages.StreamRequests)
		if err != nil {
			return err
		}
		killed := time.Now()
		c.Kill(leader)
		var d time.Duration
		deadline := time.Now().Add(2 * time.Minute)
		for d == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			pubMu.Lock()
			mu.Lock()
			for seq, at := range published {
				if at.After(killed) {
					if got, ok := arrived[seq]; ok && (d == 0 || got.Sub(killed) < d) {
						d = got.Sub(killed)
					}
				}
			}
			mu.Unlock()
			pubMu.Unlock()
		}
		if d == 0 {
			return fmt.Errorf("trial %d: no result within 2 minutes of killing server %d", trial, leader)
		}
		took = append(took, d)
		time.Sleep(max(0, failoverRestart-time.Since(killed)))
		if err := c.Restart(leader); err != nil {
			return fmt.Errorf("trial %d: restart server %d: %w", trial, leader, err)
		}
		time.Sleep(3 * time.Second)
	}
	slices.Sort(took)
	fmt.Fprintf(w, "## Recovery after a stream-leader kill\n\n")
	fmt.Fprintf(w, "Three in-process nats-servers (a RAFT cluster on loopback), R3 streams, one pool (8 slots, simulated 10–30 ms "+
		"jobs) connected to all three, a request every %s. The VCL_REQUESTS leader is shut down (restarted %s later); measured: "+
		"kill → first result of a request published after the kill. %d trials.\n\n", failoverEvery, failoverRestart, failoverTrials)
	fmt.Fprintf(w, "| measure | time |\n|---|---|\n")
	fmt.Fprintf(w, "| recovery, median | %.2f s |\n| recovery, max | %.2f s |\n", took[len(took)/2].Seconds(), took[len(took)-1].Seconds())
	fmt.Fprintf(w, "| trials | %s s |\n\n", ratesMS(seconds(took)))
	return nil
}
