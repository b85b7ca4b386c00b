package streams_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/natscluster"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/streams"
)

func startCluster(t *testing.T) *natscluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := natscluster.Start(ctx, t.TempDir(), natscluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// connectJS is a connection of one's own, as every component has.
func connectJS(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
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

// caller is one component starting up: a converging worker or bridge, or an
// operator's `vclq nats init --replicas N` (apply).
type caller struct {
	name     string
	apply    bool
	replicas int
}

type outcome struct {
	diffs   []streams.Difference
	err     error
	elapsed time.Duration
}

// startTogether runs every caller with its own connection at the same moment.
func startTogether(t *testing.T, url string, callers []caller) []outcome {
	t.Helper()
	jss := make([]jetstream.JetStream, len(callers))
	for i := range callers {
		jss[i] = connectJS(t, url)
	}
	out := make([]outcome, len(callers))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			<-start
			t0 := time.Now()
			o := streams.Options{Replicas: c.replicas}
			if c.apply {
				out[i].diffs, out[i].err = streams.Apply(ctx, jss[i], o)
			} else {
				out[i].diffs, out[i].err = streams.Converge(ctx, jss[i], o)
			}
			out[i].elapsed = time.Since(t0)
		}()
	}
	close(start)
	wg.Wait()
	for i, o := range out {
		t.Logf("%s: %d differences in %s, err %v", callers[i].name, len(o.diffs), o.elapsed.Round(time.Millisecond), o.err)
		if o.err != nil {
			t.Errorf("%s failed: %v", callers[i].name, o.err)
		}
	}
	return out
}

// asset is one stream, consumer or bucket as the cluster has it.
type asset struct {
	name     string
	config   int // configured replicas (consumers: 0 = the stream's)
	peers    int // servers that host it now
	isBucket bool
}

// siteAssets reads every asset of the definitions through the JetStream API.
func siteAssets(ctx context.Context, t *testing.T, js jetstream.JetStream) []asset {
	t.Helper()
	d := streams.Define(streams.Options{})
	var as []asset
	for _, sc := range d.Streams {
		s, err := js.Stream(ctx, sc.Name)
		if err != nil {
			t.Fatalf("stream %s: %v", sc.Name, err)
		}
		i := s.CachedInfo()
		as = append(as, asset{name: "stream " + sc.Name, config: i.Config.Replicas, peers: peers(i.Cluster)})
	}
	for _, c := range d.Consumers {
		cons, err := js.Consumer(ctx, c.Stream, c.Config.Durable)
		if err != nil {
			t.Fatalf("consumer %s: %v", c.Config.Durable, err)
		}
		i := cons.CachedInfo()
		as = append(as, asset{name: "consumer " + c.Stream + " > " + c.Config.Durable, config: i.Config.Replicas, peers: peers(i.Cluster)})
	}
	for _, b := range d.Buckets {
		s, err := js.Stream(ctx, "KV_"+b.Bucket)
		if err != nil {
			t.Fatalf("bucket %s: %v", b.Bucket, err)
		}
		i := s.CachedInfo()
		as = append(as, asset{name: "bucket " + b.Bucket, config: i.Config.Replicas, peers: peers(i.Cluster), isBucket: true})
	}
	return as
}

func peers(ci *jetstream.ClusterInfo) int {
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

// requireReplicas waits (bounded) until every asset is hosted by n servers and every
// stream and bucket is configured for n (consumers: for n, or the stream's).
func requireReplicas(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last []asset
	testutil.WaitFor(t, 25*time.Second, 250*time.Millisecond, func() error {
		last = siteAssets(ctx, t, js)
		for _, a := range last {
			wrongConfig := a.config != n && (strings.HasPrefix(a.name, "stream") || a.isBucket || a.config != 0)
			if a.peers != n || wrongConfig {
				return fmt.Errorf("%s: configured %d, on %d servers; want R%d", a.name, a.config, a.peers, n)
			}
		}
		return nil
	})
	t.Logf("all %d assets are R%d: %+v", len(last), n, last)
}

// requireUnchanged checks that nothing is mid-way through a change (no scaling
// started): every asset still R n, checked a few times over a second.
func requireUnchanged(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	for range 4 {
		requireReplicas(t, js, n)
		time.Sleep(250 * time.Millisecond)
	}
}

// replicaDiffs are the replica differences reported, by asset.
func replicaDiffs(outs []outcome) map[string]streams.Difference {
	m := map[string]streams.Difference{}
	for _, o := range outs {
		for _, d := range o.diffs {
			if d.Field == streams.Replicas {
				m[d.Asset] = d
			}
		}
	}
	return m
}

// Streams and buckets; consumers take their stream's replicas and are not listed.
func streamsAndBuckets() []string {
	d := streams.Define(streams.Options{})
	var names []string
	for _, s := range d.Streams {
		names = append(names, "stream "+s.Name)
	}
	for _, b := range d.Buckets {
		names = append(names, "bucket "+b.Bucket)
	}
	return names
}

// Issue 9 item 5: workers, bridges and `vclq nats init --replicas 3` started at the
// same moment on an empty 3-node cluster all succeed, and the site ends up R3. A
// component that converges with the default replicas afterwards changes nothing and
// reports the difference; an explicit apply may lower the count on purpose.
func TestStartTogetherOnAFreshCluster(t *testing.T) {
	c := startCluster(t)
	js := connectJS(t, c.URLs())

	var callers []caller
	for i := range 6 {
		callers = append(callers, caller{name: fmt.Sprintf("converge#%d (R1)", i)})
	}
	callers = append(callers, caller{name: "apply#0 (R3)", apply: true, replicas: 3}, caller{name: "apply#1 (R3)", apply: true, replicas: 3})
	start := time.Now()
	startTogether(t, c.URLs(), callers)
	t.Logf("%d callers done in %s", len(callers), time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		t.FailNow()
	}
	requireReplicas(t, js, 3)

	t.Run("converge with the default replicas changes nothing", func(t *testing.T) {
		outs := startTogether(t, c.URLs(), []caller{{name: "bridge without --replicas"}, {name: "worker with replicas: 1", replicas: 1}})
		requireUnchanged(t, js, 3)
		got := replicaDiffs(outs)
		for _, name := range streamsAndBuckets() {
			d, ok := got[name]
			if !ok || d.Found != "3" || d.Expected != "1" || d.Applied {
				t.Errorf("%s: replica difference %+v (reported: %v), want found 3, expected 1, left as is", name, d, ok)
			}
		}
		for _, o := range outs {
			for _, d := range o.diffs {
				if d.Field != streams.Replicas || d.Applied {
					t.Errorf("unexpected difference %s", d)
				}
			}
		}
		t.Logf("%d replica differences reported, e.g. %s", len(got), got["stream VCL_REQUESTS"])
	})

	t.Run("converge with replicas 3 reports nothing", func(t *testing.T) {
		outs := startTogether(t, c.URLs(), []caller{{name: "worker with replicas: 3", replicas: 3}})
		if len(outs[0].diffs) != 0 {
			t.Errorf("differences on a site that is as defined: %v", outs[0].diffs)
		}
	})

	t.Run("apply lowers on purpose", func(t *testing.T) {
		outs := startTogether(t, c.URLs(), []caller{{name: "nats init --replicas 1", apply: true, replicas: 1}})
		for name, d := range replicaDiffs(outs) {
			if !d.Applied {
				t.Errorf("%s: %s not applied", name, d)
			}
		}
		requireReplicas(t, js, 1)
	})
}

// oldSite creates the assets as vclq before converge did: R1 streams and buckets,
// consumers with an explicit replica count of 1.
func oldSite(ctx context.Context, t *testing.T, js jetstream.JetStream) {
	t.Helper()
	d := streams.Define(streams.Options{Replicas: 1})
	for _, sc := range d.Streams {
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range d.Consumers {
		c.Config.Replicas = 1
		if _, err := js.CreateConsumer(ctx, c.Stream, c.Config); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range d.Buckets {
		if _, err := js.CreateKeyValue(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
}

// Issue 9 item 5, second part: workers configured with `replicas: 3` against an
// existing R1 site all start (no 10126 from their consumers), report the difference
// and change nothing.
func TestConvergeWithMoreReplicasThanTheSite(t *testing.T) {
	c := startCluster(t)
	js := connectJS(t, c.URLs())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	oldSite(ctx, t, js)
	requireReplicas(t, js, 1)

	outs := startTogether(t, c.URLs(), []caller{
		{name: "worker#0 (R3)", replicas: 3}, {name: "worker#1 (R3)", replicas: 3}, {name: "worker#2 (R3)", replicas: 3},
	})
	requireUnchanged(t, js, 1)
	got := replicaDiffs(outs)
	for _, name := range streamsAndBuckets() {
		if d, ok := got[name]; !ok || d.Found != "1" || d.Expected != "3" || d.Applied {
			t.Errorf("%s: replica difference %+v (reported: %v), want found 1, expected 3, left as is", name, d, ok)
		}
	}
	for name, d := range got {
		if strings.HasPrefix(name, "consumer") {
			t.Errorf("consumer with its stream's replicas reported: %s", d)
		}
	}
	t.Logf("%d replica differences reported", len(got))

	// An operator's apply then raises everything, consumers included.
	startTogether(t, c.URLs(), []caller{{name: "nats init --replicas 3", apply: true, replicas: 3}})
	requireReplicas(t, js, 3)
}
