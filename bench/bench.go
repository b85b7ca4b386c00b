package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/natsembed"
	"github.com/vclq/vclq/streams"
)

// Suite is one measurement: it writes a Markdown section (starting with "## ") to w.
type Suite struct {
	Name string
	Run  func(ctx context.Context, w io.Writer) error
}

// Suites lists every suite in the order BENCHMARKS.md shows them. Add a suite here.
func Suites() []Suite {
	return []Suite{
		{Name: "queue", Run: Queue},
		{Name: "esx", Run: ESX},
		{Name: "flows", Run: Flows},
		{Name: "bridge", Run: Bridge},
		{Name: "takeover", Run: Takeover},
		{Name: "failover", Run: Failover},
	}
}

// Header is the top of BENCHMARKS.md: how it was produced and on what.
func Header(w io.Writer, command string) {
	fmt.Fprintf(w, "# vclq benchmarks\n\nProduced by `%s` on %s (%s/%s, %d CPUs, %s).\n"+
		"The machine is shared and noisy: compare the ratios within one run, not absolute numbers across runs.\n\n",
		command, time.Now().UTC().Format(time.RFC3339), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
}

// jetStream is an embedded nats-server with vclq's streams, and a connection to it,
// for one suite.
type jetStream struct {
	server *natsembed.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	dir    string
}

// startJetStream starts a server in a new temporary directory and ensures the streams
// with o. close stops everything and removes the directory.
func startJetStream(ctx context.Context, name string, o streams.Options) (*jetStream, error) {
	return startJetStreamSync(ctx, name, o, false)
}

// startJetStreamSync is startJetStream; syncAlways fsyncs every write before its ack
// (sync_interval: always) whatever $VCLQ_BENCH_SYNC says.
func startJetStreamSync(ctx context.Context, name string, o streams.Options, syncAlways bool) (*jetStream, error) {
	dir, err := os.MkdirTemp("", "vclq-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	j := &jetStream{dir: dir}
	so := natsembed.Options{StoreDir: dir}
	if so.SyncInterval, so.SyncAlways, err = syncSetting(); err != nil {
		j.close()
		return nil, err
	}
	if syncAlways {
		so.SyncInterval, so.SyncAlways = 0, true
	}
	if j.server, err = natsembed.Start(so); err != nil {
		j.close()
		return nil, err
	}
	if j.nc, err = nats.Connect(j.server.URL()); err != nil {
		j.close()
		return nil, err
	}
	if j.js, err = jetstream.New(j.nc); err != nil {
		j.close()
		return nil, err
	}
	if err := streams.Ensure(ctx, j.js, o); err != nil {
		j.close()
		return nil, err
	}
	return j, nil
}

// syncSetting reads $VCLQ_BENCH_SYNC, the embedded server's jetstream.sync_interval:
// "always" (fsync before every ack) or a duration; unset: the server's default (2m).
func syncSetting() (time.Duration, bool, error) {
	v := os.Getenv("VCLQ_BENCH_SYNC")
	switch v {
	case "":
		return 0, false, nil
	case "always":
		return 0, true, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, false, fmt.Errorf("VCLQ_BENCH_SYNC=%q: want always or a positive duration", v)
	}
	return d, false, nil
}

// syncLabel names the sync setting the suites run with.
func syncLabel() string {
	if v := os.Getenv("VCLQ_BENCH_SYNC"); v != "" {
		return "sync_interval " + v
	}
	return "sync_interval default (2m)"
}

func (j *jetStream) close() {
	if j.nc != nil {
		j.nc.Close()
	}
	if j.server != nil {
		j.server.Stop()
	}
	_ = os.RemoveAll(j.dir)
}
