package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

func init() { zerolog.TimeFieldFormat = time.RFC3339Nano }

func testLogger(t testing.TB) zerolog.Logger {
	if os.Getenv("VCLQ_TEST_LOG") != "" {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000", NoColor: true}).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

// startPool runs a pool until the test ends (or until the returned stop is called,
// which waits for Run to return).
func startPool(t *testing.T, j *testutil.JetStream, h worker.Handler, cfg worker.Config) (*worker.Pool, func()) {
	t.Helper()
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 200 * time.Millisecond
	}
	if cfg.PollWait == 0 {
		cfg.PollWait = 500 * time.Millisecond
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = 50 * time.Millisecond
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 2 * time.Second
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 2 * time.Second
	}
	p, err := worker.New(j.JS, j.NC, h, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("worker.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("pool %s: Run: %v", p.ID(), err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("pool %s: Run did not return within 30s of cancel", p.ID())
			}
		})
	}
	t.Cleanup(stop)
	return p, stop
}

func startJS(t *testing.T, o streams.Options) *testutil.JetStream {
	t.Helper()
	if o.AckWait == 0 {
		o.AckWait = 3 * time.Second
	}
	if o.MaxDeliver == 0 {
		o.MaxDeliver = 3
	}
	return testutil.StartVCLJetStream(t, o)
}

// publish publishes a request and returns its stream sequence.
func publish(t *testing.T, j *testutil.JetStream, r *messages.Request) uint64 {
	t.Helper()
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return publishRaw(t, j, r.Kind.Subject(), data, r.MsgID())
}

func publishRaw(t *testing.T, j *testutil.JetStream, subject string, data []byte, id string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var opts []jetstream.PublishOpt
	if id != "" {
		opts = append(opts, jetstream.WithMsgID(id))
	}
	ack, err := j.JS.Publish(ctx, subject, data, opts...)
	if err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
	return ack.Sequence
}

// readAll returns every message of stream matching filter, in order.
func readAll(t testing.TB, j *testutil.JetStream, stream, filter string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := j.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		t.Fatalf("ordered consumer on %s: %v", stream, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("consumer info: %v", err)
	}
	want := int(info.NumPending)
	var out []jetstream.Msg
	for len(out) < want {
		b, err := c.Fetch(want-len(out), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatalf("fetch: %v", err)
		}
		n := 0
		for m := range b.Messages() {
			out = append(out, m)
			n++
		}
		if n == 0 {
			t.Fatalf("read %s %s: got %d of %d", stream, filter, len(out), want)
		}
	}
	return out
}

// results decodes every result event.
func results(t testing.TB, j *testutil.JetStream) []*messages.Result {
	t.Helper()
	var out []*messages.Result
	for _, m := range readAll(t, j, messages.StreamEvents, messages.SubjectResultPrefix+">") {
		r, err := messages.DecodeResult(m.Data())
		if err != nil {
			t.Fatalf("result event %s does not decode: %v\n%s", m.Subject(), err, m.Data())
		}
		out = append(out, r)
	}
	return out
}

// resultsBySeq maps request sequence to its results (there must be at most one).
func resultsBySeq(t testing.TB, j *testutil.JetStream) map[uint64][]*messages.Result {
	t.Helper()
	m := map[uint64][]*messages.Result{}
	for _, r := range results(t, j) {
		m[r.RequestSeq] = append(m[r.RequestSeq], r)
	}
	return m
}

// waitResults waits until n results are stored.
func waitResults(t *testing.T, j *testutil.JetStream, n int, total time.Duration) map[uint64][]*messages.Result {
	t.Helper()
	testutil.WaitFor(t, total, 50*time.Millisecond, func() error {
		if got := countSubject(t, j, messages.StreamEvents, messages.SubjectResultPrefix+">"); got < n {
			return fmt.Errorf("%d results, want %d", got, n)
		}
		return nil
	})
	return resultsBySeq(t, j)
}

func countSubject(t testing.TB, j *testutil.JetStream, stream, filter string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := j.JS.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	return n
}

func consumerInfo(t testing.TB, j *testutil.JetStream) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := j.JS.Consumer(ctx, messages.StreamRequests, messages.ConsumerWorkers)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func requestsLeft(t testing.TB, j *testutil.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := j.JS.Stream(ctx, messages.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func slotsKV(t testing.TB, j *testutil.JetStream) jetstream.KeyValue {
	t.Helper()
	kv, err := j.JS.KeyValue(context.Background(), messages.BucketSlotLeases)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// probe is a scriptable handler: it reports each job start on started, then runs fn.
type probe struct {
	started chan *worker.Job
	fn      func(ctx context.Context, job *worker.Job) (messages.Result, error)
}

func newProbe(fn func(ctx context.Context, job *worker.Job) (messages.Result, error)) *probe {
	return &probe{started: make(chan *worker.Job, 1000), fn: fn}
}

func (p *probe) Handle(ctx context.Context, job *worker.Job) (messages.Result, error) {
	p.started <- job
	return p.fn(ctx, job)
}

func (p *probe) next(t *testing.T, within time.Duration) *worker.Job {
	t.Helper()
	select {
	case j := <-p.started:
		return j
	case <-time.After(within):
		t.Fatalf("no job started within %s", within)
		return nil
	}
}

// ok returns the success fields of the request's kind.
func ok(job *worker.Job) messages.Result {
	switch job.Request.Kind {
	case messages.KindReclaim, messages.KindReload:
		return messages.Result{RequestState: messages.StateComplete, ComputerState: messages.StateAvailable}
	case messages.KindReserved:
		return messages.Result{RequestState: messages.StateInUse, ComputerState: messages.StateInUse}
	}
	return messages.Result{RequestState: messages.StateReserved, ComputerState: messages.StateReserved}
}

// hangUntilDone blocks until the job's context ends and records its cause.
func hangUntilDone(causes chan<- error) func(ctx context.Context, job *worker.Job) (messages.Result, error) {
	return func(ctx context.Context, job *worker.Job) (messages.Result, error) {
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return messages.Result{}, fmt.Errorf("stopped: %w", context.Cause(ctx))
	}
}

func sim(t *testing.T, spec string) *simhandler.Handler {
	t.Helper()
	h, err := simhandler.New(spec)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func waitCause(t *testing.T, causes <-chan error, want error, within time.Duration) {
	t.Helper()
	select {
	case c := <-causes:
		if !errors.Is(c, want) {
			t.Fatalf("cause %v, want %v", c, want)
		}
	case <-time.After(within):
		t.Fatalf("handler not cancelled within %s (want cause %v)", within, want)
	}
}

var _ = nats.ErrTimeout
