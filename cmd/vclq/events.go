package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/internal/natsconn"
	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
)

// vclq events: replay (and follow) loadlog and result events.
func runEvents(ctx context.Context, e *env, args []string) int {
	var nc natsconn.Config
	var f eventlog.Filter
	var asJSON bool
	var outage time.Duration
	fs := flagSet(e, "events", "[--reservation N] [--type loadlog|result] [--follow] [--json]")
	nc.RegisterFlags(fs)
	fs.Int64Var(&f.Reservation, "reservation", 0, "only this reservation's events")
	fs.StringVar(&f.Type, "type", "", "loadlog or result (default both)")
	fs.BoolVar(&f.Follow, "follow", false, "keep printing new events until interrupted")
	fs.BoolVar(&asJSON, "json", false, "one JSON object per line")
	fs.DurationVar(&outage, "reconnect-timeout", 5*time.Minute, "with --follow: how long NATS may stay unreachable before events gives up (exit 1)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if _, err := f.Subject(); err != nil {
		fmt.Fprintf(e.stderr, "vclq events: %v\n", err)
		return exitUsage
	}
	if outage <= 0 {
		fmt.Fprintln(e.stderr, "vclq events: --reconnect-timeout must be positive")
		return exitUsage
	}
	conn, js, ok := connect(e, nc)
	if !ok {
		return exitFailure
	}
	defer conn.Close()
	show := func(ev eventlog.Event) {
		if asJSON {
			printJSON(e.stdout, ev)
		} else {
			printEvent(e.stdout, ev)
		}
	}
	if f.Follow {
		r := &follower{js: js, connected: conn.IsConnected, outage: outage, log: e.log, print: show}
		if err := r.follow(ctx, f); err != nil {
			return fail(e, "events: %v", err)
		}
		return exitOK
	}
	rctx, cancel := commandContext(ctx, 5*time.Minute)
	defer cancel()
	printed := 0
	err := eventlog.Read(rctx, js, f, func(ev eventlog.Event) error {
		printed++
		show(ev)
		return nil
	})
	if err != nil {
		return fail(e, "events: %v", err)
	}
	if printed == 0 && f.Reservation > 0 {
		kind := ""
		if f.Type != "" {
			kind = f.Type + " "
		}
		fmt.Fprintf(e.stderr, "vclq events: no %sevents for reservation %d\n", kind, f.Reservation)
		return exitFailure
	}
	return exitOK
}

// follower follows events across NATS outages: when a read fails it waits (bounded:
// outage counted from the first failure since the last event printed) for the event
// stream to be reachable again and resumes after the last sequence it printed, so that nothing is
// printed twice or skipped.
type follower struct {
	js        jetstream.JetStream
	connected func() bool
	outage    time.Duration
	log       zerolog.Logger
	print     func(eventlog.Event)
	last      uint64 // stream sequence of the last event printed
}

// retryEvery is how often a follower checks whether NATS is back.
const retryEvery = 250 * time.Millisecond

func (r *follower) follow(ctx context.Context, f eventlog.Filter) error {
	var lostAt time.Time // when the reads began failing without progress
	var lostSeq uint64
	for {
		f.After = r.last
		err := eventlog.Read(ctx, r.js, f, func(ev eventlog.Event) error {
			r.last = ev.Seq
			r.print(ev)
			return nil
		})
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if lostAt.IsZero() || r.last != lostSeq {
			lostAt, lostSeq = time.Now(), r.last
		}
		left := r.outage - time.Since(lostAt)
		if left <= 0 {
			return fmt.Errorf("no progress for %s (after event #%d): %w", r.outage, r.last, err)
		}
		r.log.Warn().Err(err).Uint64("after_seq", r.last).Msg("events: lost the event stream; resuming once NATS is back")
		if err := r.waitForStream(ctx, left); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("NATS did not come back within %s (after event #%d): %w", r.outage, r.last, err)
		}
		r.log.Info().Uint64("after_seq", r.last).Msg("events: resuming")
	}
}

// waitForStream waits until the connection is up and the event stream answers.
func (r *follower) waitForStream(ctx context.Context, timeout time.Duration) error {
	return wait.Until(ctx, timeout, retryEvery, func(ctx context.Context) (bool, error) {
		if !r.connected() {
			return false, errors.New("not connected")
		}
		if _, err := r.js.Stream(ctx, messages.StreamEvents); err != nil {
			return false, err
		}
		return true, nil
	}, wait.InitialDelay(retryEvery))
}

func printEvent(w io.Writer, ev eventlog.Event) {
	ts := ev.Time.Local().Format("2006-01-02 15:04:05.000")
	switch {
	case ev.Loadlog != nil:
		l := ev.Loadlog
		dur := ""
		if l.DurationMS > 0 {
			dur = fmt.Sprintf(" %.1fs", float64(l.DurationMS)/1000)
		}
		info := ""
		if l.Info != "" {
			info = "  " + l.Info
		}
		late := ""
		if ev.Late {
			late = "  (late: after the request's result; ignored)"
		}
		fmt.Fprintf(w, "%s #%d res %d %-8s step %2d %-18s %-5s%s%s  [%s]%s\n", ts, ev.Seq, l.ReservationID, l.Kind, l.Step, l.Name, l.Phase, dur, info, l.Worker, late)
	case ev.Result != nil:
		r := ev.Result
		detail := ""
		if r.Error != "" {
			detail = fmt.Sprintf("  %s: %s", r.ErrorCode, r.Error)
		}
		fmt.Fprintf(w, "%s #%d res %d %-8s RESULT %s request=%s computer=%s%s  [%s]\n", ts, ev.Seq, r.ReservationID, r.Kind, r.Outcome, r.RequestState, r.ComputerState, detail, r.Worker)
	default:
		fmt.Fprintf(w, "%s #%d %s UNREADABLE: %s\n", ts, ev.Seq, ev.Subject, ev.Err)
	}
}
