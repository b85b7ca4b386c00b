package natscluster_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/natscluster"
)

func startCluster(t *testing.T) *natscluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	c, err := natscluster.Start(ctx, t.TempDir(), natscluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	t.Logf("cluster of %d formed in %s, meta leader %s", c.Size(), time.Since(start).Round(time.Millisecond), c.Name(c.MetaLeader()))
	return c
}

func connect(t *testing.T, c *natscluster.Cluster) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// The cluster forms with one meta leader, and an R3 stream survives the loss and
// restart of its leader: a new leader is elected, no acknowledged message is lost,
// and the restarted server catches up.
func TestClusterFailsOverAStreamLeader(t *testing.T) {
	c := startCluster(t)
	if l := c.MetaLeader(); l < 0 {
		t.Fatal("no meta leader after Start")
	}
	nc, js := connect(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitStreamLeader(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	const before, after = 50, 50
	publish(ctx, t, js, 0, before)

	c.Kill(leader)
	if c.Server(leader) != nil || c.StreamLeader("T") == leader {
		t.Fatalf("killed server %d still listed", leader)
	}
	next, err := c.WaitStreamLeader(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	if next == leader {
		t.Fatalf("leader %d was killed but is still the leader", leader)
	}
	publish(ctx, t, js, before, after)
	if err := c.Restart(leader); err != nil {
		t.Fatal(err)
	}
	if c.Server(leader) == nil || !c.Server(leader).JetStreamIsStreamCurrent(natscluster.Account, "T") {
		t.Fatalf("restarted server %d is not current for T", leader)
	}
	// Make the restarted server the leader to read from its store.
	for c.StreamLeader("T") != leader && ctx.Err() == nil {
		if _, err := c.StepDownStream(ctx, nc, "T"); err != nil {
			t.Fatal(err)
		}
	}
	info, err := js.Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	st := info.CachedInfo().State
	t.Logf("leader %s killed, %s took over, %s restarted and leads again; stream has %d messages (want %d)",
		c.Name(leader), c.Name(next), c.Name(leader), st.Msgs, before+after)
	if st.Msgs != before+after {
		t.Fatalf("stream has %d messages after failover, want %d", st.Msgs, before+after)
	}
}

func TestConsumerLeaderAndStepDown(t *testing.T) {
	c := startCluster(t)
	nc, js := connect(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "C", Subjects: []string{"c"}, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	cl, err := c.WaitConsumerLeader(ctx, "C", "d")
	if err != nil {
		t.Fatal(err)
	}
	old := c.StreamLeader("C")
	next, err := c.StepDownStream(ctx, nc, "C")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("consumer leader %s; stream leader %s stepped down, %s leads", c.Name(cl), c.Name(old), c.Name(next))
	if next == old || next < 0 {
		t.Fatalf("step down: leader %d -> %d", old, next)
	}
	if _, err := c.StepDownStream(ctx, nc, "NOPE"); err == nil {
		t.Fatal("step down of a missing stream succeeded")
	}
	if err := c.Restart(0); err == nil {
		t.Fatal("restart of a running server succeeded")
	}
}

func publish(ctx context.Context, t *testing.T, js jetstream.JetStream, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		_, err := js.Publish(pctx, "t.x", []byte(fmt.Sprint(i)), jetstream.WithMsgID(fmt.Sprint(i)), jetstream.WithRetryAttempts(50), jetstream.WithRetryWait(200*time.Millisecond))
		cancel()
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
}
