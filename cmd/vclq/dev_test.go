package main

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/demo"
	"github.com/vclq/vclq/internal/guestlab"
	"github.com/vclq/vclq/internal/natsconn"
	"github.com/vclq/vclq/internal/natsembed"
	"github.com/vclq/vclq/messages"
)

// `vclq dev --once --requests N --json` runs N new reservations through the whole
// embedded system and exits 0 only if all succeeded.
func TestDevOnceRunsRequests(t *testing.T) {
	for _, guests := range []string{"auto", "none"} {
		t.Run(guests, func(t *testing.T) {
			code, out, errs := vclqRun(t, "", "dev", "--once", "--requests", "5", "--json", "--hosts", "1", "--slots", "2", "--guests", guests)
			if code != exitOK {
				t.Fatalf("exit %d\n%s\n%s", code, out, errs)
			}
			// With --json, standard output carries JSON objects only, one per line
			// (jq reads it); the human lines go to standard error.
			if !strings.Contains(errs, "NATS_URL=nats://127.0.0.1:") || !strings.Contains(errs, "VCSIM_URL=https://") {
				t.Errorf("dev did not print its URLs to stderr:\n%s", errs)
			}
			if guests == "none" && !strings.Contains(errs, "GUESTS=simulated") {
				t.Errorf("simulated guests not said plainly:\n%s", errs)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			decoded := 0
			for i, line := range lines {
				var obj map[string]any
				if err := json.Unmarshal([]byte(line), &obj); err != nil {
					t.Errorf("stdout line %d is not a JSON object: %v: %q", i+1, err, line)
					continue
				}
				decoded++
			}
			t.Logf("%d of %d stdout lines decoded as JSON objects", decoded, len(lines))
			var s demo.Summary
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
				t.Fatalf("summary: %v\n%s", err, out)
			}
			if s.Requests != 5 || s.Succeeded != 5 || s.Failed != 0 {
				t.Fatalf("summary %+v", s)
			}
			slots := map[string]int{}
			for _, o := range s.Outcomes {
				if o.Result == nil || o.Result.RequestState != "reserved" || o.Result.ImageID == 0 {
					t.Errorf("outcome %+v", o)
				}
				slots[o.Slot]++
			}
			if len(slots) != 2 {
				t.Errorf("requests not spread over both slots: %v", slots)
			}
		})
	}
}

// `vclq dev`'s worker records each slot's SSH host key in the vclq_hostkeys bucket, as
// a real worker does (docs/osconfig.md): after a run with namespace guests the bucket
// has a key per loaded slot. (Named so that `make test` runs it with the other dev
// run, without -race: vcsim's own code races under a power watch.)
func TestDevOnceRunsRequestsRecordsHostKeys(t *testing.T) {
	if err := guestlab.Check(); err != nil {
		t.Skipf("namespace guests: %v", err)
	}
	dir := t.TempDir()
	code, out, errs := vclqRun(t, "", "dev", "--once", "--requests", "4", "--json", "--hosts", "1", "--slots", "2", "--guests", "namespace", "--dir", dir)
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
	var s demo.Summary
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		t.Fatalf("summary: %v\n%s", err, out)
	}
	loaded := map[string]bool{}
	for _, o := range s.Outcomes {
		if o.Result != nil && o.Result.Outcome == messages.OutcomeSuccess {
			loaded[o.Slot] = true
		}
	}
	// The run's JetStream store outlives it (--dir): open it again.
	srv, err := natsembed.Start(natsembed.Options{StoreDir: filepath.Join(dir, "jetstream"), ServerName: "vclq-dev"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	nc, js, err := natsconn.Connect(natsconn.Config{URL: srv.URL()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, messages.BucketHostKeys)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		t.Fatal(err)
	}
	t.Logf("slots loaded: %v; %s keys: %v", loaded, messages.BucketHostKeys, keys)
	if len(loaded) != 2 {
		t.Errorf("%d slots loaded, want 2", len(loaded))
	}
	for slot := range loaded {
		if !slices.Contains(keys, "slot."+slot) {
			t.Errorf("no host key recorded for slot %s", slot)
		}
	}
}
