package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

// vclqRunUntil runs vclq in-process until it exits or d has passed (its context
// ends: a worker then stops and exits 0).
func vclqRunUntil(t *testing.T, d time.Duration, args ...string) (int, string) {
	t.Helper()
	var out, errb testutil.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	code := run(ctx, args, strings.NewReader(""), &out, &errb)
	return code, errb.String()
}

// A worker whose ack wait or delivery budget differs from the workers' consumer
// refuses to start (exit 2) saying which setting, where it comes from, both values,
// and the two ways out; each way out, as printed, works, and the nats init one keeps
// the consumer's other setting.
func TestWorkerConsumerMismatchSaysWhatToChange(t *testing.T) {
	for _, tc := range []struct {
		name      string
		flags     []string
		want      []string
		wantAfter streams.Options // the consumer after the printed nats init
	}{
		{"ack wait", []string{"--ack-wait", "45s", "--max-deliver", "7"}, []string{"ack wait 45s (--ack-wait, config key \"ack_wait\", $VCLQ_ACK_WAIT)",
			"consumer vclq-workers's 1m30s", "--ack-wait 1m30s", "vclq nats init --ack-wait 45s --max-deliver 7 --replicas 1"},
			streams.Options{AckWait: 45 * time.Second, MaxDeliver: 7}},
		{"max deliver", []string{"--ack-wait", "90s", "--max-deliver", "3"}, []string{"max deliver 3 (--max-deliver, config key \"max_deliver\", $VCLQ_MAX_DELIVER)",
			"consumer vclq-workers's 7", "--max-deliver 7", "vclq nats init --ack-wait 1m30s --max-deliver 3 --replicas 1"},
			streams.Options{AckWait: 90 * time.Second, MaxDeliver: 3}},
		{"both (the worker's defaults)", nil, []string{"ack wait 1m0s (--ack-wait", "max deliver 5 (--max-deliver",
			"start this worker with --ack-wait 1m30s --max-deliver 7", "vclq nats init --ack-wait 1m0s --max-deliver 5 --replicas 1"},
			streams.Options{AckWait: time.Minute, MaxDeliver: 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := testutil.StartVCLJetStream(t, streams.Options{AckWait: 90 * time.Second, MaxDeliver: 7})
			base := []string{"worker", "--nats", j.URL, "--handler", "sim:", "--no-ensure", "--id", "mismatch-1"}
			code, errs := vclqRunUntil(t, 20*time.Second, append(base, tc.flags...)...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d\n%s", code, exitUsage, errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr does not say %q:\n%s", w, errs)
				}
			}
			// Way out 1: the consumer's value, as printed.
			m := regexp.MustCompile(`start this worker with ((?:--[a-z-]+ \S+ ?)+) \(`).FindStringSubmatch(errs)
			if m == nil {
				t.Fatalf("no worker flags in:\n%s", errs)
			}
			fix := strings.Fields(m[1])
			if code, errs := vclqRunUntil(t, 2*time.Second, append(append(base, tc.flags...), fix...)...); code != exitOK || strings.Contains(errs, "does not match") {
				t.Errorf("with %v: exit %d\n%s", fix, code, errs)
			}
			// Way out 2: the printed nats init, then the worker as it was.
			cmd := regexp.MustCompile(`vclq (nats init .*)`).FindStringSubmatch(errs)
			if cmd == nil {
				t.Fatalf("no nats init in:\n%s", errs)
			}
			args := append(strings.Fields(cmd[1]), "--nats", j.URL)
			if code, out := vclqRunUntil(t, 20*time.Second, args...); code != exitOK {
				t.Fatalf("%v: exit %d\n%s", args, code, out)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := j.JS.Consumer(ctx, messages.StreamRequests, messages.ConsumerWorkers)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.CachedInfo().Config; got.AckWait != tc.wantAfter.AckWait || got.MaxDeliver != tc.wantAfter.MaxDeliver {
				t.Errorf("after %v: consumer ack wait %s max deliver %d, want %s %d", args, got.AckWait, got.MaxDeliver, tc.wantAfter.AckWait, tc.wantAfter.MaxDeliver)
			}
			if code, errs := vclqRunUntil(t, 2*time.Second, append(base, tc.flags...)...); code != exitOK || strings.Contains(errs, "does not match") {
				t.Errorf("after nats init: exit %d\n%s", code, errs)
			}
		})
	}
}
