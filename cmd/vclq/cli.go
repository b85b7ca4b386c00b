package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/natsconn"
)

// flagSet makes a subcommand's flag set that prints errors to e.stderr.
func flagSet(e *env, name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet("vclq "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: vclq %s %s\n\nflags:\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags placed anywhere among the arguments (after "--" everything is
// positional); ok is false (with the exit code) when the command must stop.
func parse(fs *flag.FlagSet, args []string) (code int, ok bool) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				return exitOK, false
			}
			return exitUsage, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			positional = append(positional, rest...)
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	// Leave the positional arguments where fs.Args() finds them.
	_ = fs.Parse(append([]string{"--"}, positional...))
	return 0, true
}

// connect opens NATS for a short-lived command.
func connect(e *env, c natsconn.Config) (*nats.Conn, jetstream.JetStream, bool) {
	nc, js, err := natsconn.Connect(c, e.log)
	if err != nil {
		fmt.Fprintf(e.stderr, "vclq: %v\n", err)
		return nil, nil, false
	}
	return nc, js, true
}

// commandContext bounds a short-lived command.
func commandContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, timeout)
}

// printJSON writes v as one line of JSON.
func printJSON(w io.Writer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(w, "{\"error\":%q}\n", err.Error())
		return
	}
	fmt.Fprintf(w, "%s\n", b)
}

func fail(e *env, format string, args ...any) int {
	fmt.Fprintf(e.stderr, "vclq: "+format+"\n", args...)
	return exitFailure
}
