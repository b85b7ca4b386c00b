// Command vclq provisions Apache VCL reservations on VMware ESX hosts with a NATS
// JetStream worker pool. This package only parses flags, loads configuration and wires
// packages together; every subcommand lives in its own file.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Exit codes, stable for scripts.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed (or, for dev --once, a reservation failed)
	exitUsage   = 2 // bad flags or arguments
)

// env is what every subcommand gets.
type env struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	log            zerolog.Logger
}

type command struct {
	summary string
	run     func(ctx context.Context, e *env, args []string) int
}

// commands lists the subcommands. Each file adds its line here.
func commands() map[string]command {
	return map[string]command{
		"version": {"print the version", runVersion},
		"worker":  {"run a worker: pull requests, run their state flows", runWorker},
		"dev":     {"everything embedded: NATS, workers, a demo", runDev},
		"nats":    {"init|export|check: JetStream streams, consumers and buckets as code", runNats},
		"submit":  {"validate a request and queue it", runSubmit},
		"events":  {"replay or follow loadlog and result events", runEvents},
		"status":  {"workers, leased slots and queue depth", runStatus},
		"dlq":     {"list|show|replay dead letters", runDLQ},
		"watch":   {"live progress of a reservation", runWatch},
		"bench":   {"measure and write docs/BENCHMARKS.md", runBench},
		"bridge":  {"bridge a legacy VCL database to NATS (replaces vcld)", runBridge},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "vclq: unknown command %q\n\n", args[0])
		usage(stderr, cmds)
		return exitUsage
	}
	e := &env{stdout: stdout, stderr: stderr, stdin: stdin, log: newLogger(stderr)}
	return c.run(ctx, e, args[1:])
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "usage: vclq <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nRun `vclq <command> -h` for its flags.")
}

// newLogger logs to w: JSON when VCLQ_LOG_FORMAT=json, a console format otherwise
// (coloured on a terminal); the
// level comes from VCLQ_LOG_LEVEL (default info).
func newLogger(w io.Writer) zerolog.Logger {
	level, err := zerolog.ParseLevel(os.Getenv("VCLQ_LOG_LEVEL"))
	if err != nil || os.Getenv("VCLQ_LOG_LEVEL") == "" {
		level = zerolog.InfoLevel
	}
	out := w
	if os.Getenv("VCLQ_LOG_FORMAT") != "json" {
		_, tty := terminalWidth(w)
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: !tty} // colours on a terminal only
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger()
}
