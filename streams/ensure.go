package streams

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/wait"
)

// Bounds of Converge and Apply. Creating a stream, consumer or bucket is a RAFT meta
// operation: while a cluster elects its meta leader, or when several components
// create the same asset at once, some requests fail with "temporarily unavailable",
// "already in use" or a timeout, and succeed when tried again.
const (
	// EnsureTimeout bounds a whole Converge or Apply, whatever the caller's context:
	// a start-up that cannot converge within it fails rather than hangs.
	EnsureTimeout = 60 * time.Second
	// AttemptTimeout bounds one round (read, then create or update) for one asset.
	// A round that times out is safe to repeat: creation is create-or-compare.
	AttemptTimeout = 5 * time.Second
	// ReadTimeout bounds the read of an asset within a round. An asset that is
	// assigned but has no leader yet (just created, or being scaled) gets no answer
	// at all: better ask again soon than wait out the round.
	ReadTimeout = 2 * time.Second
	// retryPause is the first pause before an asset is tried again; it doubles up to
	// retryMaxPause (with jitter, so racing creators spread out).
	retryPause    = 100 * time.Millisecond
	retryMaxPause = 2 * time.Second
	// retryAttempts bounds the rounds per asset.
	retryAttempts = 40
)

// Converge is what every component that merely starts (worker, bridge, vclq dev)
// runs: it creates what is missing, with the given options (Replicas included), and
// compares what exists with the definitions. It never changes an existing asset:
// differences, a replica count above all, are returned for the caller to log, and
// only an operator's `vclq nats init` (Apply) changes them. Transient errors of a
// cluster that is starting or of concurrent creators are retried, bounded by
// EnsureTimeout; the error names the asset that failed.
func Converge(ctx context.Context, js jetstream.JetStream, o Options) ([]Difference, error) {
	return ensure(ctx, js, Define(o), converge)
}

// Apply is `vclq nats init`: Converge, and then it updates every existing asset that
// differs from the definitions, replica counts included (raising or lowering them on
// purpose). The returned differences are those it applied (Applied set).
func Apply(ctx context.Context, js jetstream.JetStream, o Options) ([]Difference, error) {
	return ensure(ctx, js, Define(o), apply)
}

// Compare reads the assets and returns how they differ from the definitions, a
// missing asset included (Field Missing); it creates and changes nothing
// (`vclq nats check --server`).
func Compare(ctx context.Context, js jetstream.JetStream, o Options) ([]Difference, error) {
	return ensure(ctx, js, Define(o), compare)
}

// Ensure is Converge for callers that only need the assets to exist (tests,
// benchmarks, tools on a fresh server): differences are not reported.
func Ensure(ctx context.Context, js jetstream.JetStream, o Options) error {
	_, err := Converge(ctx, js, o)
	return err
}

type mode int

const (
	converge mode = iota
	apply
	compare
)

// Missing is the Field of a Difference that says the asset does not exist (Compare).
const Missing = "existence"

// missing is the difference Compare reports for an asset that does not exist.
func missing(asset string) []Difference {
	return []Difference{{Asset: asset, Field: Missing, Found: "missing", Expected: "present"}}
}

// ensurer ensures one set of definitions in one mode.
type ensurer struct {
	js   jetstream.JetStream
	mode mode
	// replicas is each ensured stream's replica count as it is now.
	replicas map[string]int
}

func ensure(ctx context.Context, js jetstream.JetStream, d Definitions, m mode) ([]Difference, error) {
	ctx, cancel := context.WithTimeout(ctx, EnsureTimeout)
	defer cancel()
	e := &ensurer{js: js, mode: m, replicas: map[string]int{}}
	var all []Difference
	for _, sc := range d.Streams {
		diffs, err := e.stream(ctx, sc)
		all = append(all, diffs...)
		if err != nil {
			return all, err
		}
	}
	for _, c := range d.Consumers {
		diffs, err := e.consumer(ctx, c)
		all = append(all, diffs...)
		if err != nil {
			return all, err
		}
	}
	for _, b := range d.Buckets {
		diffs, err := e.bucket(ctx, b)
		all = append(all, diffs...)
		if err != nil {
			return all, err
		}
	}
	return all, nil
}

// stream creates the stream if it is missing, else compares it (and updates it in
// apply mode).
func (e *ensurer) stream(ctx context.Context, want jetstream.StreamConfig) ([]Difference, error) {
	var diffs []Difference
	err := retry(ctx, func(ctx context.Context) error {
		diffs = nil
		s, err := read(ctx, func(ctx context.Context) (jetstream.Stream, error) { return e.js.Stream(ctx, want.Name) })
		if errors.Is(err, jetstream.ErrStreamNotFound) && e.mode == compare {
			diffs = missing("stream " + want.Name)
			return nil
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			// A concurrent creator with another config makes this fail with "stream
			// name already in use": the next round reads and compares its stream.
			if _, err := e.js.CreateStream(ctx, want); err != nil {
				return fmt.Errorf("create: %w", err)
			}
			e.replicas[want.Name] = want.Replicas
			return nil
		}
		if err != nil {
			return err
		}
		found := s.CachedInfo().Config
		e.replicas[want.Name] = found.Replicas
		diffs = compareConfigs("stream "+want.Name, found, want, "metadata")
		if e.mode == apply && len(diffs) > 0 {
			if _, err := e.js.UpdateStream(ctx, want); err != nil {
				return fmt.Errorf("update: %w", err)
			}
			e.replicas[want.Name] = want.Replicas
			markApplied(diffs)
		}
		return nil
	})
	if err != nil {
		return diffs, fmt.Errorf("ensure stream %s: %w", want.Name, err)
	}
	return diffs, nil
}

// consumer creates the consumer if it is missing, else compares it (and updates it
// in apply mode). Its definition carries no replica count (Replicas 0): it takes its
// stream's, whatever that is, so that it can never exceed it (10126) nor differ from
// a work queue's (10134). An existing consumer's explicit count is a difference only
// when it is not the stream's.
func (e *ensurer) consumer(ctx context.Context, want Consumer) ([]Difference, error) {
	asset := "consumer " + want.Stream + " > " + want.Config.Durable
	var diffs []Difference
	err := retry(ctx, func(ctx context.Context) error {
		diffs = nil
		c, err := read(ctx, func(ctx context.Context) (jetstream.Consumer, error) {
			return e.js.Consumer(ctx, want.Stream, want.Config.Durable)
		})
		if (errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)) && e.mode == compare {
			diffs = missing(asset)
			return nil
		}
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			// "consumer already exists" from a concurrent creator: compare next round.
			if _, err := e.js.CreateConsumer(ctx, want.Stream, want.Config); err != nil {
				return fmt.Errorf("create: %w", err)
			}
			return nil
		}
		if err != nil {
			return err
		}
		found := c.CachedInfo().Config
		diffs = compareConfigs(asset, found, want.Config, "metadata", Replicas)
		if r, ok := e.replicas[want.Stream]; ok && found.Replicas != 0 && found.Replicas != r {
			diffs = append(diffs, Difference{Asset: asset, Field: Replicas, Found: strconv.Itoa(found.Replicas),
				Expected: "0 (the stream's " + strconv.Itoa(r) + ")"})
		}
		if e.mode == apply && len(diffs) > 0 {
			if _, err := e.js.UpdateConsumer(ctx, want.Stream, want.Config); err != nil {
				return fmt.Errorf("update: %w", err)
			}
			markApplied(diffs)
		}
		return nil
	})
	if err != nil {
		return diffs, fmt.Errorf("ensure consumer %s on %s: %w", want.Config.Durable, want.Stream, err)
	}
	return diffs, nil
}

// bucket creates the KV bucket if it is missing, else compares it (and updates it in
// apply mode).
func (e *ensurer) bucket(ctx context.Context, want jetstream.KeyValueConfig) ([]Difference, error) {
	var diffs []Difference
	err := retry(ctx, func(ctx context.Context) error {
		diffs = nil
		kv, err := read(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return e.js.KeyValue(ctx, want.Bucket) })
		if errors.Is(err, jetstream.ErrBucketNotFound) && e.mode == compare {
			diffs = missing("bucket " + want.Bucket)
			return nil
		}
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			_, err := e.js.CreateKeyValue(ctx, want)
			if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
				return fmt.Errorf("the NATS server is too old for per-key TTL leases (need >= 2.11): %w", err)
			}
			if err != nil {
				return fmt.Errorf("create: %w", err)
			}
			return nil
		}
		if err != nil {
			return err
		}
		found, err := read(ctx, func(ctx context.Context) (jetstream.KeyValueConfig, error) { return bucketConfig(ctx, kv) })
		if err != nil {
			return err
		}
		diffs = compareConfigs("bucket "+want.Bucket, found, want, "metadata")
		if e.mode == apply && len(diffs) > 0 {
			if _, err := e.js.UpdateKeyValue(ctx, want); err != nil {
				return fmt.Errorf("update: %w", err)
			}
			markApplied(diffs)
		}
		return nil
	})
	if err != nil {
		return diffs, fmt.Errorf("ensure bucket %s: %w", want.Bucket, err)
	}
	return diffs, nil
}

// bucketConfig is an existing bucket's configuration as the server has it.
func bucketConfig(ctx context.Context, kv jetstream.KeyValue) (jetstream.KeyValueConfig, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return jetstream.KeyValueConfig{}, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return jetstream.KeyValueConfig{}, fmt.Errorf("bucket status of type %T", st)
	}
	return bs.Config(), nil
}

// read runs a read of an asset bounded by ReadTimeout.
func read[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	rctx, cancel := context.WithTimeout(ctx, ReadTimeout)
	defer cancel()
	return f(rctx)
}

func markApplied(diffs []Difference) {
	for i := range diffs {
		diffs[i].Applied = true
	}
}

// retry runs one round for an asset until it succeeds, bounded by ctx, AttemptTimeout
// per round and retryAttempts rounds, pausing with backoff between rounds. Only
// transient errors (transient) are retried.
func retry(ctx context.Context, round func(context.Context) error) error {
	left := EnsureTimeout
	if d, ok := ctx.Deadline(); ok {
		left = time.Until(d)
	}
	if left <= 0 {
		return context.Cause(ctx)
	}
	return wait.Until(ctx, left, retryPause, func(ctx context.Context) (bool, error) {
		rctx, cancel := context.WithTimeout(ctx, AttemptTimeout)
		defer cancel()
		err := round(rctx)
		switch {
		case err == nil:
			return true, nil
		case transient(err):
			return false, err
		default:
			return false, wait.Permanent(err)
		}
	}, wait.Backoff(retryMaxPause), wait.Jitter(0.5), wait.MaxAttempts(retryAttempts))
}

// transientCodes are the JetStream API errors of a cluster that is electing leaders or
// placing assets, and of concurrent creators of one asset.
var transientCodes = []jetstream.ErrorCode{
	10004, // incomplete results
	10008, // JetStream system temporarily unavailable (no meta leader)
	10009, // JetStream cluster can not handle request (not the leader)
	10023, // insufficient resources (peers not all known yet)
	10039, // JetStream not enabled for account (yet)
	10075, // peer remap failed
	10118, // stream is offline
	10119, // consumer is offline
	// 10126, consumer replica count exceeds parent stream: a consumer that takes its
	// stream's replicas meets this only while the stream is being scaled up.
	10126,
	jetstream.JSErrCodeStreamNameInUse,       // 10058, a concurrent creator's stream: read it
	jetstream.JSErrCodeConsumerNameExists,    // 10013
	jetstream.JSErrCodeConsumerExists,        // 10148, a concurrent creator's consumer: read it
	jetstream.JSErrCodeConsumerAlreadyExists, // 10105
}

// transient reports whether err is worth another round.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return slices.Contains(transientCodes, apiErr.ErrorCode)
	}
	return errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, jetstream.ErrBucketExists)
}
