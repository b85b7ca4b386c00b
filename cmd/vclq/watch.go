package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/internal/natsconn"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/progress"
)

// defaultWatchTimeout bounds the wait for a reservation's first event.
const defaultWatchTimeout = 2 * time.Minute

// errNoEvents ends a watch whose reservation sent no event in time.
var errNoEvents = errors.New("no events")

// vclq watch <reservation>: a live progress bar per step with an estimate of the time
// remaining (VCL's est values at first, then times learned from past events).
func runWatch(ctx context.Context, e *env, args []string) int {
	var nc natsconn.Config
	var asJSON, all bool
	var learn uint64
	var timeout, redraw time.Duration
	fs := flagSet(e, "watch", "<reservation>")
	nc.RegisterFlags(fs)
	fs.BoolVar(&asJSON, "json", false, "print the view as one JSON object per event")
	fs.BoolVar(&all, "all", false, "keep watching after a result (the reservation's next request)")
	fs.Uint64Var(&learn, "learn", 5000, "learn step times from this many recent loadlog events")
	fs.DurationVar(&timeout, "timeout", defaultWatchTimeout, "how long to wait for the reservation's first event; exit 1 if none came")
	fs.DurationVar(&redraw, "redraw", 500*time.Millisecond, "on a terminal: redraw interval of running bars")
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
	if timeout <= 0 || redraw <= 0 {
		fmt.Fprintln(e.stderr, "vclq watch: --timeout and --redraw must be positive")
		return exitUsage
	}
	conn, js, ok := connect(e, nc)
	if !ok {
		return exitFailure
	}
	defer conn.Close()

	est := learnEstimates(ctx, js, res, learn, e.log)
	ui := newWatchUI(progress.NewView(res, est), e.stdout, asJSON)
	if ui.mode != watchTerminal {
		fmt.Fprintf(e.stderr, "waiting for events of reservation %d (up to %s)\n", res, timeout)
	}
	outcome, err := ui.follow(ctx, js, all, timeout, redraw)
	switch {
	case errors.Is(err, errNoEvents):
		fmt.Fprintf(e.stderr, "vclq watch: no events for reservation %d within %s\n", res, timeout)
		return exitFailure
	case err != nil:
		return fail(e, "watch: %v", err)
	case outcome != "" && outcome != messages.OutcomeSuccess:
		return exitFailure
	}
	return exitOK
}

// learnEstimates learns step times from recent end events of other reservations.
func learnEstimates(ctx context.Context, js jetstream.JetStream, res int64, last uint64, log zerolog.Logger) *progress.Estimates {
	est := progress.NewEstimates()
	if last == 0 {
		return est
	}
	lctx, cancel := commandContext(ctx, 30*time.Second)
	defer cancel()
	err := eventlog.Read(lctx, js, eventlog.Filter{Type: "loadlog", Last: last}, func(ev eventlog.Event) error {
		if l := ev.Loadlog; l != nil && l.Phase == messages.PhaseEnd && l.ReservationID != res {
			est.Learn(l.Name, time.Duration(l.DurationMS)*time.Millisecond)
		}
		return nil
	})
	if err != nil {
		log.Warn().Err(err).Msg("could not learn step times; using VCL's estimates")
	}
	return est
}

type watchMode int

const (
	watchPlain    watchMode = iota // not a terminal: the view once, at the result
	watchJSON                      // one JSON object per event
	watchTerminal                  // redrawn in place, lines cut to the terminal's width
)

// watchUI owns the view: events (the reader's goroutine) and redraws (a ticker's)
// take mu, so the view is never read while it changes.
type watchUI struct {
	mu     sync.Mutex
	view   *progress.View
	out    io.Writer
	mode   watchMode
	events int
}

// terminalWidther is a writer that knows it is a terminal (tests' fake terminals).
type terminalWidther interface {
	TerminalWidth() (int, bool)
}

// terminalWidth is w's width in columns, and whether w is a terminal at all.
func terminalWidth(w io.Writer) (int, bool) {
	switch t := w.(type) {
	case terminalWidther:
		return t.TerminalWidth()
	case *os.File:
		return fileTerminalWidth(t)
	}
	return 0, false
}

func newWatchUI(v *progress.View, out io.Writer, asJSON bool) *watchUI {
	u := &watchUI{view: v, out: out, mode: watchPlain}
	if _, tty := terminalWidth(out); tty {
		u.mode = watchTerminal
	}
	if asJSON {
		u.mode = watchJSON
	}
	return u
}

// follow reads the reservation's events until its result (or, with all, until ctx
// ends), redrawing a terminal every redraw. It fails with errNoEvents when no event
// came within timeout.
func (u *watchUI) follow(ctx context.Context, js jetstream.JetStream, all bool, timeout, redraw time.Duration) (messages.Outcome, error) {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	first := make(chan struct{})
	var loops sync.WaitGroup
	loops.Go(func() { cancelWithoutEvents(wctx, cancel, first, timeout) })
	if u.mode == watchTerminal {
		u.redraw(time.Now())
		loops.Go(func() { u.redrawEvery(wctx, redraw) })
	}
	var outcome messages.Outcome
	err := eventlog.Read(wctx, js, eventlog.Filter{Reservation: u.view.Reservation, Follow: true}, func(ev eventlog.Event) error {
		if u.apply(ev, time.Now()) == 1 {
			close(first)
		}
		if ev.Result == nil {
			return nil
		}
		outcome = ev.Result.Outcome
		u.printFinal(time.Now())
		if !all {
			return eventlog.ErrStop
		}
		return nil
	})
	cause := context.Cause(wctx)
	cancel(nil)
	loops.Wait()
	if errors.Is(cause, errNoEvents) {
		return "", errNoEvents
	}
	return outcome, err
}

// cancelWithoutEvents cancels ctx with errNoEvents unless first closes within timeout.
func cancelWithoutEvents(ctx context.Context, cancel context.CancelCauseFunc, first <-chan struct{}, timeout time.Duration) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-first:
	case <-ctx.Done():
	case <-t.C:
		cancel(errNoEvents)
	}
}

// redrawEvery redraws the terminal until ctx ends: running bars move between events.
func (u *watchUI) redrawEvery(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			u.redraw(now)
		}
	}
}

// apply folds an event into the view and draws it; it returns the events seen so far.
func (u *watchUI) apply(ev eventlog.Event, now time.Time) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if ev.Late {
		return u.events // a fenced-out job's event after the result: not shown
	}
	u.view.Apply(ev.Loadlog, ev.Result)
	u.events++
	switch u.mode {
	case watchJSON:
		printJSON(u.out, u.view)
	case watchTerminal:
		u.drawTerminal(now)
	}
	return u.events
}

// redraw draws the terminal view at now.
func (u *watchUI) redraw(now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.drawTerminal(now)
}

// printFinal prints the view once, off a terminal (the terminal shows it already).
func (u *watchUI) printFinal(now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.mode == watchPlain {
		fmt.Fprint(u.out, u.view.Render(now, 40))
	}
}

// drawTerminal clears the screen and draws the view, each line cut to the terminal's
// width (its width now: the window may have been resized). The caller holds mu.
func (u *watchUI) drawTerminal(now time.Time) {
	cols, ok := terminalWidth(u.out)
	if !ok || cols <= 0 {
		cols = 80
	}
	bar := max(10, min(40, cols/3))
	fmt.Fprint(u.out, "\x1b[H\x1b[2J"+fitLines(u.view.Render(now, bar), cols))
}

// fitLines cuts every line of s to cols characters, ending a cut line with "…".
func fitLines(s string, cols int) string {
	lines := strings.SplitAfter(s, "\n")
	var b strings.Builder
	for _, l := range lines {
		nl := strings.HasSuffix(l, "\n")
		r := []rune(strings.TrimSuffix(l, "\n"))
		if len(r) > cols {
			r = append(r[:max(0, cols-1)], '…')
		}
		b.WriteString(string(r))
		if nl {
			b.WriteString("\n")
		}
	}
	return b.String()
}
