package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

// vclqRun runs the CLI in-process and returns its exit code and outputs.
func vclqRun(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb testutil.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := run(ctx, args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageAndUnknownCommand(t *testing.T) {
	if code, _, errs := vclqRun(t, "", "frobnicate"); code != exitUsage || !strings.Contains(errs, `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: %d %q", code, errs)
	}
	if code, _, _ := vclqRun(t, ""); code != exitUsage {
		t.Fatalf("no command: %d", code)
	}
	if code, _, errs := vclqRun(t, "", "submit", "bogus", "-"); code != exitUsage || !strings.Contains(errs, "not a request kind") {
		t.Fatalf("bogus kind: %d %q", code, errs)
	}
}

func TestNatsInitSubmitStatusDLQ(t *testing.T) {
	j := testutil.StartJetStream(t)
	url := "--nats=" + j.URL
	if code, out, errs := vclqRun(t, "", "nats", "init", url); code != exitOK {
		t.Fatalf("nats init: %d %s %s", code, out, errs)
	}
	if code, out, errs := vclqRun(t, "", "nats", "check", "--dir", filepath.Join("..", "..", streams.ExportDir)); code != exitOK {
		t.Fatalf("nats check: %d %s %s", code, out, errs)
	}
	payload, err := os.ReadFile("../../messages/testdata/new.json")
	if err != nil {
		t.Fatal(err)
	}

	// A valid request is queued once, however often it is submitted.
	code, out, errs := vclqRun(t, string(payload), "submit", "new", "-", url, "--json")
	if code != exitOK {
		t.Fatalf("submit: %d %s %s", code, out, errs)
	}
	var ack struct {
		Seq       uint64 `json:"seq"`
		Duplicate bool   `json:"duplicate"`
		MsgID     string `json:"msg_id"`
	}
	if err := json.Unmarshal([]byte(out), &ack); err != nil || ack.Seq != 1 || ack.Duplicate {
		t.Fatalf("submit output %q: %v", out, err)
	}
	if _, out, _ = vclqRun(t, string(payload), "submit", "new", "-", url, "--json"); !strings.Contains(out, `"duplicate":true`) {
		t.Fatalf("resubmit not a duplicate: %s", out)
	}
	// The wrong kind and an invalid request are refused before publishing.
	if code, _, errs := vclqRun(t, string(payload), "submit", "reload", "-", url); code != exitFailure || !strings.Contains(errs, "not published") {
		t.Fatalf("wrong kind: %d %s", code, errs)
	}
	hostile := strings.Replace(string(payload), `"vm-031.vcl.example.edu"`, `"a;rm -rf /"`, 1)
	if code, _, errs := vclqRun(t, hostile, "submit", "new", "-", url); code != exitFailure || !strings.Contains(errs, "computer.hostname") {
		t.Fatalf("hostile hostname: %d %s", code, errs)
	}
	ctx := context.Background()
	s, _ := j.JS.Stream(ctx, messages.StreamRequests)
	if i, _ := s.Info(ctx); i.State.Msgs != 1 {
		t.Fatalf("queue holds %d requests, want 1", i.State.Msgs)
	}

	// status reports the queued request.
	code, out, errs = vclqRun(t, "", "status", url, "--json")
	if code != exitOK {
		t.Fatalf("status: %d %s", code, errs)
	}
	var st clusterStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Queue.Stored != 1 || st.Queue.Pending != 1 {
		t.Fatalf("status %s: %v", out, err)
	}

	// dlq: list, show, replay a dead letter.
	m := nats.NewMsg(messages.DeadLetterSubject(messages.KindNew, 7001))
	m.Data = payload
	m.Header.Set(messages.HeaderReason, "handler failed")
	m.Header.Set(messages.HeaderOrigSubject, "vcl.new")
	m.Header.Set(messages.HeaderOrigSequence, "99")
	if _, err := j.JS.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := vclqRun(t, "", "dlq", "list", url); code != exitOK || !strings.Contains(out, "handler failed") || !strings.Contains(out, "1 dead letter(s)") {
		t.Fatalf("dlq list: %d %s", code, out)
	}
	if code, out, _ := vclqRun(t, "", "dlq", "show", "1", url); code != exitOK || !strings.Contains(out, "vm-031") {
		t.Fatalf("dlq show: %d %s", code, out)
	}
	if code, out, errs := vclqRun(t, "", "dlq", "replay", "1", url); code != exitOK || !strings.Contains(out, "re-queued as request 2") {
		t.Fatalf("dlq replay: %d %s %s", code, out, errs)
	}
	if code, _, _ := vclqRun(t, "", "dlq", "replay", "1", url); code != exitFailure {
		t.Fatalf("replaying a re-driven dead letter again succeeded")
	}
}

// The real nats CLI replays one reservation's events, as the contract promises.
func TestNatsCLIReplaysOneReservation(t *testing.T) {
	natsBin := natsCLIPath(t)
	j := testutil.StartVCLJetStream(t, streams.Options{})
	now := time.Now().UTC()
	for _, res := range []int64{7001, 7002} {
		for i, name := range []string{"statuscheck", "startload", "nodeready"} {
			b, _ := json.Marshal(messages.Loadlog{Schema: 1, ReservationID: res, RequestID: 1, ComputerID: 2, Kind: messages.KindNew, Name: name, Phase: messages.PhaseBegin, Step: i + 1, Time: now, Worker: "w", RequestSeq: 1})
			if _, err := j.JS.Publish(context.Background(), messages.LoadlogSubject(res), b); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, natsBin, "--server", j.URL, "sub", "--stream", messages.StreamEvents, "--all", "--count", "3", "--raw", messages.ReservationEventsSubject(7002))
	cmd.Env = append(os.Environ(), "NATS_CONTEXT=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nats sub: %v\n%s", err, out)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var l messages.Loadlog
		if json.Unmarshal([]byte(line), &l) == nil && l.Name != "" {
			if l.ReservationID != 7002 {
				t.Fatalf("replay of 7002 returned reservation %d", l.ReservationID)
			}
			names = append(names, l.Name)
		}
	}
	if strings.Join(names, ",") != "statuscheck,startload,nodeready" {
		t.Fatalf("nats sub replayed %v\n%s", names, out)
	}
}

func natsCLIPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	gopath, _ := exec.Command("go", "env", "GOPATH").Output()
	p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "nats")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("natscli is not installed: `make test-deps` installs it")
	}
	t.Skip("natscli is not installed (make test-deps installs it)")
	return ""
}

func TestWatchEndsWithTheResult(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	now := time.Now().UTC()
	pub := func(subject string, v any) {
		b, _ := json.Marshal(v)
		if _, err := j.JS.Publish(context.Background(), subject, b); err != nil {
			t.Fatal(err)
		}
	}
	// Another reservation's history teaches the step times.
	pub(messages.LoadlogSubject(1), messages.Loadlog{Schema: 1, ReservationID: 1, Kind: messages.KindNew, Name: "transfervm", Phase: messages.PhaseEnd, Step: 5, DurationMS: 1500, Time: now, Worker: "w", RequestSeq: 1})
	for i, name := range []string{"statuscheck", "nodeready"} {
		for _, ph := range []messages.Phase{messages.PhaseBegin, messages.PhaseEnd} {
			pub(messages.LoadlogSubject(7), messages.Loadlog{Schema: 1, ReservationID: 7, Kind: messages.KindNew, Name: name, Phase: ph, Step: i + 1, Time: now, Worker: "w", RequestSeq: 2})
		}
	}
	// The result comes while watch runs. watch may see it and return before the
	// publisher has its ack, so the test waits for the publisher before it ends (and
	// closes the server).
	published := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		b, _ := json.Marshal(messages.Result{Schema: 1, ReservationID: 7, Kind: messages.KindNew, Outcome: messages.OutcomeFailed, RequestState: "failed", ComputerState: "failed", ErrorCode: "failed", Error: "boom", Worker: "w", Time: now, RequestSeq: 2})
		_, err := j.JS.Publish(context.Background(), messages.ResultSubject(7), b)
		published <- err
	}()
	code, out, errs := vclqRun(t, "", "watch", "7", "--nats="+j.URL)
	if err := <-published; err != nil {
		t.Fatalf("publish the result: %v", err)
	}
	if code != exitFailure {
		t.Fatalf("watch of a failed reservation exited %d: %s %s", code, out, errs)
	}
	for _, want := range []string{"✓ statuscheck", "- transfervm", "learned", "RESULT failed", "boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("watch output lacks %q:\n%s", want, out)
		}
	}
}

// `vclq nats check --server` compares the server's assets with the code, read only;
// `vclq nats init` applies the code and says what it changed.
func TestNatsCheckServerAndInit(t *testing.T) {
	j := testutil.StartJetStream(t)
	url := "--nats=" + j.URL
	dir := "--dir=" + filepath.Join("..", "..", streams.ExportDir)
	steps := []struct {
		args     []string
		wantCode int
		wantOut  string
	}{
		{[]string{"nats", "check", "--server", dir, url}, exitFailure, "server: stream VCL_REQUESTS: missing"},
		{[]string{"nats", "check", "--server", dir, url}, exitFailure, "server: bucket vclq_slots: missing"},
		{[]string{"nats", "init", url}, exitOK, "(0 changed)"},
		{[]string{"nats", "check", "--server", dir, url}, exitOK, "the server's streams, consumers and buckets match the code"},
		{[]string{"nats", "init", "--ack-wait=2m", url}, exitOK, "consumer VCL_REQUESTS > vclq-workers: ack_wait is 1m0s, expected 2m0s (updated)"},
		{[]string{"nats", "check", "--server", dir, url}, exitFailure, "server: consumer VCL_REQUESTS > vclq-workers: ack_wait is 2m0s, expected 1m0s"},
	}
	for i, s := range steps {
		code, out, errs := vclqRun(t, "", s.args...)
		t.Logf("step %d %v: exit %d\n%s", i+1, s.args[:2], code, out)
		if code != s.wantCode || !strings.Contains(out, s.wantOut) {
			t.Fatalf("step %d %v: exit %d, out %q, err %q; want %d and %q", i+1, s.args, code, out, errs, s.wantCode, s.wantOut)
		}
	}
	// --dir "" compares nothing but the server, and nothing at all without --server.
	// (The server's consumer has the ack wait of the last init.)
	code, out, errs := vclqRun(t, "", "nats", "check", "--dir", "", "--server", "--ack-wait=2m", url)
	if code != exitOK || out != "the server's streams, consumers and buckets match the code\n" {
		t.Errorf("nats check --dir '' --server: exit %d, out %q, err %q; want exit 0 and only the server compared", code, out, errs)
	}
	if code, _, errs := vclqRun(t, "", "nats", "check", "--dir", ""); code != exitUsage || !strings.Contains(errs, "compares nothing") {
		t.Errorf("nats check --dir '': exit %d, err %q; want a usage error", code, errs)
	}
	names := streamNames(t, j)
	if len(names) != len(streams.Define(streams.Options{}).Streams)+len(streams.Define(streams.Options{}).Buckets) {
		t.Errorf("streams after init: %v", names)
	}
}
