package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/internal/natsconn"
)

// vclq events: replay (and follow) loadlog and result events.
func runEvents(ctx context.Context, e *env, args []string) int {
	var nc natsconn.Config
	var f eventlog.Filter
	var asJSON bool
	fs := flagSet(e, "events", "[--reservation N] [--type loadlog|result] [--follow] [--json]")
	nc.RegisterFlags(fs)
	fs.Int64Var(&f.Reservation, "reservation", 0, "only this reservation's events")
	fs.StringVar(&f.Type, "type", "", "loadlog or result (default both)")
	fs.BoolVar(&f.Follow, "follow", false, "keep printing new events until interrupted")
	fs.BoolVar(&asJSON, "json", false, "one JSON object per line")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if _, err := f.Subject(); err != nil {
		fmt.Fprintf(e.stderr, "vclq events: %v\n", err)
		return exitUsage
	}
	conn, js, ok := connect(e, nc)
	if !ok {
		return exitFailure
	}
	defer conn.Close()
	rctx := ctx
	if !f.Follow {
		var cancel context.CancelFunc
		rctx, cancel = commandContext(ctx, 5*time.Minute)
		defer cancel()
	}
	err := eventlog.Read(rctx, js, f, func(ev eventlog.Event) error {
		if asJSON {
			printJSON(e.stdout, ev)
		} else {
			printEvent(e.stdout, ev)
		}
		return nil
	})
	if err != nil {
		return fail(e, "events: %v", err)
	}
	return exitOK
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
