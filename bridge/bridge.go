package bridge

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/wait"
)

// Bridge moves a VCL database's requests onto NATS and the workers' events back.
type Bridge struct {
	db         *sql.DB
	js         jetstream.JetStream
	cfg        Config
	log        zerolog.Logger
	states     names
	loadstates names
	mnList     string // "1,2": the management node ids, validated integers

	// hook, when set (tests), is called at named points; an error aborts Run as a
	// crash would.
	hook func(point string) error
}

// Hook points.
const (
	pointClaiming  = "claiming"  // a row is about to be claimed: NATS was connected when the poll began
	pointPublished = "published" // a claim's message is published, its transaction not yet committed
	pointClaimed   = "claimed"   // a claim (published, in the outbox as published) committed
	pointApplied   = "applied"   // an event's transaction committed, not yet acked
)

// errCrash wraps a hook's error: Run stops at once, as if the process died.
type errCrash struct{ err error }

func (e errCrash) Error() string { return "simulated crash: " + e.err.Error() }
func (e errCrash) Unwrap() error { return e.err }

func (b *Bridge) at(point string) error {
	if b.hook == nil {
		return nil
	}
	if err := b.hook(point); err != nil {
		return errCrash{err}
	}
	return nil
}

// New checks the configuration and the database (VCL's state and computerloadstate
// names, the management nodes, the account's privileges: CheckPrivileges), creates
// the bridge's own tables, and returns a bridge.
// It does not start anything.
func New(ctx context.Context, db *sql.DB, js jetstream.JetStream, cfg Config, log zerolog.Logger) (*Bridge, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if db == nil || js == nil {
		return nil, fmt.Errorf("%w: a database and a JetStream handle are required", ErrConfig)
	}
	b := &Bridge{db: db, js: js, cfg: cfg, log: log}
	ids := make([]string, len(cfg.ManagementNodes))
	for i, id := range cfg.ManagementNodes {
		ids[i] = fmt.Sprint(id)
	}
	b.mnList = strings.Join(ids, ",")
	if b.states, err = loadNames(ctx, db, "SELECT id, name FROM state", requiredStates, "state"); err != nil {
		return nil, err
	}
	if b.loadstates, err = loadNames(ctx, db, "SELECT id, loadstatename FROM computerloadstate", requiredLoadstates, "computerloadstate"); err != nil {
		return nil, err
	}
	var n int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM managementnode WHERE id IN ("+b.mnList+")").Scan(&n); err != nil {
		return nil, schemaErr("read managementnode", err)
	}
	if n != len(cfg.ManagementNodes) {
		return nil, fmt.Errorf("%w: management node(s) %s: only %d of %d exist in managementnode", ErrConfig, b.mnList, n, len(cfg.ManagementNodes))
	}
	if err := CheckPrivileges(ctx, db); err != nil {
		return nil, err
	}
	return b, nil
}

// Run polls requests and applies events until ctx ends, retrying database and NATS
// failures with backoff. It returns nil when ctx ends, and an error wrapping
// ErrPrivileges or ErrSchema as soon as the server refuses the bridge's account a
// statement, its login or its database, or the schema lacks a table or column: those
// are never retried.
func (b *Bridge) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context) error{b.pollLoop, b.eventLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := loop(ctx); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

func (b *Bridge) pollLoop(ctx context.Context) error {
	bo := backoff{min: 500 * time.Millisecond, max: min(b.cfg.MaxBackoff, b.cfg.Interval)}
	for {
		st, err := b.PollOnce(ctx)
		b.metrics().Polled(err == nil, st.Claimed, st.Failed)
		delay := b.cfg.Interval
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.As(err, new(errCrash)):
			return err
		case fatal(err) != nil:
			return fmt.Errorf("poll: %w", fatal(err))
		case err != nil:
			b.noteError(err)
			delay = bo.next()
			b.log.Warn().Err(err).Dur("retry_in", delay).Msg("bridge poll failed")
		default:
			bo.reset()
			if st.Claimed+st.Failed+st.Published+st.Expired > 0 {
				b.log.Info().Int("claimed", st.Claimed).Int("failed", st.Failed).Int("published", st.Published).Int("expired", st.Expired).Msg("bridge poll")
			}
		}
		if wait.Sleep(ctx, delay) != nil {
			return nil
		}
	}
}

// backoff doubles from min to max.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// checkIn keeps managementnode.lastcheckin current, as vcld does every pass.
func (b *Bridge) checkIn(ctx context.Context) error {
	if _, err := b.db.ExecContext(ctx, "UPDATE managementnode SET lastcheckin = NOW() WHERE id IN ("+b.mnList+")"); err != nil {
		return fmt.Errorf("check in management node(s) %s: %w", b.mnList, err)
	}
	b.metrics().CheckedIn()
	return nil
}
