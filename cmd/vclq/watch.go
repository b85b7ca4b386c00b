package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/internal/natsconn"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/progress"
)

// vclq watch <reservation>: a live progress bar per step with an estimate of the time
// remaining (VCL's est values at first, then times learned from past events).
func runWatch(ctx context.Context, e *env, args []string) int {
	var nc natsconn.Config
	var asJSON, all bool
	var learn uint64
	fs := flagSet(e, "watch", "<reservation>")
	nc.RegisterFlags(fs)
	fs.BoolVar(&asJSON, "json", false, "print the view as one JSON object per event")
	fs.BoolVar(&all, "all", false, "keep watching after a result (the reservation's next request)")
	fs.Uint64Var(&learn, "learn", 5000, "learn step times from this many recent loadlog events")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	res, err := strconv.ParseInt(fs.Arg(0), 10, 64)
	if err != nil || res <= 0 {
		fmt.Fprintf(e.stderr, "vclq watch: %q is not a reservation id\n", fs.Arg(0))
		return exitUsage
	}
	conn, js, ok := connect(e, nc)
	if !ok {
		return exitFailure
	}
	defer conn.Close()

	est := progress.NewEstimates()
	if learn > 0 {
		lctx, cancel := commandContext(ctx, 30*time.Second)
		err := eventlog.Read(lctx, js, eventlog.Filter{Type: "loadlog", Last: learn}, func(ev eventlog.Event) error {
			if l := ev.Loadlog; l != nil && l.Phase == messages.PhaseEnd && l.ReservationID != res {
				est.Learn(l.Name, time.Duration(l.DurationMS)*time.Millisecond)
			}
			return nil
		})
		cancel()
		if err != nil {
			e.log.Warn().Err(err).Msg("could not learn step times; using VCL's estimates")
		}
	}

	view := progress.NewView(res, est)
	tty := isTerminal(e.stdout)
	var outcome messages.Outcome
	draw := func() {
		switch {
		case asJSON:
			printJSON(e.stdout, view)
		case tty:
			fmt.Fprint(e.stdout, "\x1b[H\x1b[2J"+view.Render(time.Now(), 40))
		}
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	if tty && !asJSON {
		go func() { // redraw running bars between events
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-wctx.Done():
					return
				case <-t.C:
					draw()
				}
			}
		}()
	}
	err = eventlog.Read(wctx, js, eventlog.Filter{Reservation: res, Follow: true}, func(ev eventlog.Event) error {
		if ev.Late {
			return nil // a fenced-out job's event after the result
		}
		view.Apply(ev.Loadlog, ev.Result)
		draw()
		if ev.Result != nil {
			outcome = ev.Result.Outcome
			if !tty && !asJSON {
				fmt.Fprint(e.stdout, view.Render(time.Now(), 40))
			}
			if !all {
				return eventlog.ErrStop
			}
		}
		return nil
	})
	stop()
	if err != nil {
		return fail(e, "watch: %v", err)
	}
	if outcome != "" && outcome != messages.OutcomeSuccess {
		return exitFailure
	}
	return exitOK
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
