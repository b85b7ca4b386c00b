package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/natsconn"
	"github.com/vclq/vclq/messages"
)

// clusterStatus is what `vclq status` reports.
type clusterStatus struct {
	Queue struct {
		Stored      uint64 `json:"stored"`       // requests in VCL_REQUESTS
		Pending     uint64 `json:"pending"`      // not yet delivered
		InFlight    int    `json:"in_flight"`    // delivered, not acked
		Redelivered int    `json:"redelivered"`  // in flight and delivered more than once
		DeadLetters uint64 `json:"dead_letters"` // in VCL_DEADLETTERS
	} `json:"queue"`
	Workers []json.RawMessage `json:"workers"`
	Slots   []slotLease       `json:"slots"`
}

type slotLease struct {
	Key      string          `json:"key"`
	Revision uint64          `json:"revision"`
	Since    time.Time       `json:"since"`
	Holder   json.RawMessage `json:"holder"`
}

// vclq status: workers, slots and queue depth.
func runStatus(ctx context.Context, e *env, args []string) int {
	var nc natsconn.Config
	var asJSON bool
	fs := flagSet(e, "status", "[--json]")
	nc.RegisterFlags(fs)
	fs.BoolVar(&asJSON, "json", false, "JSON output")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	conn, js, ok := connect(e, nc)
	if !ok {
		return exitFailure
	}
	defer conn.Close()
	cctx, cancel := commandContext(ctx, 20*time.Second)
	defer cancel()
	st, err := readStatus(cctx, js)
	if err != nil {
		return fail(e, "status: %v", err)
	}
	if asJSON {
		printJSON(e.stdout, st)
		return exitOK
	}
	q := st.Queue
	fmt.Fprintf(e.stdout, "queue: %d stored, %d waiting, %d in flight (%d redelivered), %d dead letters\n", q.Stored, q.Pending, q.InFlight, q.Redelivered, q.DeadLetters)
	fmt.Fprintf(e.stdout, "workers: %d\n", len(st.Workers))
	for _, w := range st.Workers {
		var r struct {
			ID          string    `json:"id"`
			Hostname    string    `json:"hostname"`
			PID         int       `json:"pid"`
			Concurrency int       `json:"concurrency"`
			Heartbeat   time.Time `json:"heartbeat"`
			Active      []any     `json:"active"`
		}
		_ = json.Unmarshal(w, &r)
		fmt.Fprintf(e.stdout, "  %-24s host %s pid %d  %d/%d jobs  heartbeat %s ago\n", r.ID, r.Hostname, r.PID, len(r.Active), r.Concurrency, time.Since(r.Heartbeat).Round(time.Second))
	}
	fmt.Fprintf(e.stdout, "slots leased: %d\n", len(st.Slots))
	for _, s := range st.Slots {
		fmt.Fprintf(e.stdout, "  %-16s rev %-6d since %s  %s\n", s.Key, s.Revision, s.Since.Local().Format(time.TimeOnly), s.Holder)
	}
	return exitOK
}

func readStatus(ctx context.Context, js jetstream.JetStream) (*clusterStatus, error) {
	st := &clusterStatus{Workers: []json.RawMessage{}, Slots: []slotLease{}}
	reqs, err := js.Stream(ctx, messages.StreamRequests)
	if err != nil {
		return nil, fmt.Errorf("stream %s (run `vclq nats init`): %w", messages.StreamRequests, err)
	}
	st.Queue.Stored = reqs.CachedInfo().State.Msgs
	cons, err := js.Consumer(ctx, messages.StreamRequests, messages.ConsumerWorkers)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", messages.ConsumerWorkers, err)
	}
	ci := cons.CachedInfo()
	st.Queue.Pending, st.Queue.InFlight, st.Queue.Redelivered = ci.NumPending, ci.NumAckPending, ci.NumRedelivered
	if d, err := js.Stream(ctx, messages.StreamDeadLetters); err == nil {
		st.Queue.DeadLetters = d.CachedInfo().State.Msgs
	}
	for _, b := range []string{messages.BucketWorkers, messages.BucketSlotLeases} {
		kv, err := js.KeyValue(ctx, b)
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", b, err)
		}
		filter := ">"
		if b == messages.BucketSlotLeases {
			filter = "computer.*" // leases; not the slots' served records or waiters
		}
		lister, err := kv.ListKeysFiltered(ctx, filter)
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", b, err)
		}
		var keys []string
		for k := range lister.Keys() {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			entry, err := kv.Get(ctx, k)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				continue // expired or released since listed
			}
			if err != nil {
				return nil, fmt.Errorf("bucket %s key %s: %w", b, k, err)
			}
			val := json.RawMessage(entry.Value())
			if !json.Valid(val) {
				val, _ = json.Marshal(string(entry.Value()))
			}
			if b == messages.BucketWorkers {
				st.Workers = append(st.Workers, val)
			} else {
				st.Slots = append(st.Slots, slotLease{Key: k, Revision: entry.Revision(), Since: entry.Created(), Holder: val})
			}
		}
	}
	return st, nil
}
