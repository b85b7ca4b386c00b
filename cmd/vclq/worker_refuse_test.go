package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

// workerEnv is the environment without anything that configures a worker, so that
// only the test's arguments do.
func workerEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "NATS_") || strings.HasPrefix(kv, "VCLQ_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// requestsQueue reports the requests waiting in VCL_REQUESTS and what the workers'
// consumer has delivered.
func requestsQueue(t *testing.T, j *testutil.JetStream) (msgs, delivered uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := j.JS.Stream(ctx, messages.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	si, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Consumer(ctx, messages.ConsumerWorkers)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return si.State.Msgs, ci.Delivered.Consumer
}

// A worker without real flow configuration (no --config, a config without a flow
// section, --handler flow without one) or without a NATS server refuses to start:
// exit 2 within a second, a message naming what is missing, and the queued request is
// neither delivered nor answered. With --handler sim:… it runs, warns, and every job's
// loadlog says that it was simulated.
func TestWorkerWithoutFlowConfigRefuses(t *testing.T) {
	bin := vclqBinary(t)
	// The worker's defaults: a worker that would start finds nothing to object to.
	j := testutil.StartVCLJetStream(t, streams.Options{AckWait: defaultAckWait, MaxDeliver: defaultMaxDeliver})
	publishRequests(t, j, []*messages.Request{simhandler.Request(messages.KindNew, 31, 3)})
	noFlow := filepath.Join(t.TempDir(), "worker.json")
	if err := os.WriteFile(noFlow, []byte(`{"nats":{"url":"`+j.URL+`"},"concurrency":2}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no config", []string{"--nats", j.URL}, []string{`"flow" section`, "--handler sim:"}},
		{"config without flow", []string{"--config", noFlow}, []string{`"flow" section`, "--handler sim:"}},
		{"flow handler without flow", []string{"--nats", j.URL, "--handler", "flow"}, []string{`"flow" section`, "--handler sim:"}},
		{"no NATS server", []string{"--handler", "sim:work=10ms"}, []string{"--nats", "NATS_URL"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append([]string{"worker", "--id", "refuser"}, tc.args...)...)
			cmd.Env = workerEnv()
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stderr, &stderr
			start := time.Now()
			err := cmd.Run()
			took := time.Since(start)
			var ee *exec.ExitError
			code := 0
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			t.Logf("exit %d after %s: %s", code, took.Round(time.Millisecond), strings.TrimSpace(stderr.String()))
			if code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			if took > time.Second {
				t.Errorf("took %s to refuse, want under 1s", took)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("message does not name %q", w)
				}
			}
			msgs, delivered := requestsQueue(t, j)
			t.Logf("afterwards: %d requests queued, %d delivered, %d results", msgs, delivered, resultCount(t, j))
			if msgs != 1 || delivered != 0 || resultCount(t, j) != 0 {
				t.Errorf("the queued request was touched: %d queued, %d delivered, %d results", msgs, delivered, resultCount(t, j))
			}
		})
	}

	// Asked for explicitly, the simulated handler runs the request, warns at start and
	// says so in the request's loadlog.
	w := startWorkersNamed(t, j.URL, "simulator", "--handler", "sim:work=10ms")
	testutil.WaitFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if resultCount(t, j) < 1 {
			return errors.New("no result yet")
		}
		return nil
	})
	infos := loadlogInfos(t, j, 31)
	t.Logf("loadlog of reservation 31: %q", infos)
	if len(infos) == 0 || infos[0] != "simulated handler: no VM was touched" {
		t.Errorf("first loadlog event %q, want the simulated handler's notice", infos)
	}
	if !strings.Contains(strings.Join(infos, "|"), "|simulated") {
		t.Errorf("end event does not say simulated: %q", infos)
	}
	log, _ := os.ReadFile(w.log)
	if !bytes.Contains(log, []byte(`"level":"warn"`)) || !bytes.Contains(log, []byte("simulated handler")) {
		t.Errorf("no warning about the simulated handler in the worker's log:\n%s", log)
	}
}

// loadlogInfos reads the info texts of a reservation's loadlog events in order ("" for
// events without one).
func loadlogInfos(t *testing.T, j *testutil.JetStream, reservation int64) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := j.JS.OrderedConsumer(ctx, messages.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{messages.LoadlogSubject(reservation)}})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		m, err := c.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return out
		}
		l, err := messages.DecodeLoadlog(m.Data())
		if err != nil {
			t.Fatalf("loadlog does not decode: %v", err)
		}
		out = append(out, l.Info)
	}
}
