package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/natsconn"
)

// flagSet makes a subcommand's flag set: errors and usage after a mistake go to
// e.stderr; -h, -help or --help print the usage (what the command does, its flags) to
// e.stdout and parse ends the command with exit 0.
func flagSet(e *env, name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet("vclq "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	h := &helpFlag{stdout: e.stdout}
	fs.Var(h, "h", "print this help and exit")
	fs.Var(h, "help", "print this help and exit")
	fs.Usage = func() { writeUsage(fs.Output(), fs, name, args) }
	return fs
}

// writeUsage prints the usage line, what the command does and its flags.
func writeUsage(w io.Writer, fs *flag.FlagSet, name, args string) {
	fmt.Fprintf(w, "usage: vclq %s %s\n\n", name, args)
	if about := describe(name); about != "" {
		fmt.Fprintf(w, "%s\n\n", about)
	}
	fmt.Fprintln(w, "flags:")
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
}

// describe says what a command ("dlq", "nats init") does.
func describe(name string) string {
	if d, ok := subcommandHelp[name]; ok {
		return d
	}
	first, _, _ := strings.Cut(name, " ")
	return commands()[first].summary
}

// subcommandHelp describes the subcommands of nats and dlq.
var subcommandHelp = map[string]string{
	"nats init":   "create or update the JetStream streams, consumers and KV buckets on a server",
	"nats export": "write the streams, consumers and buckets as nats CLI definitions (and init.sh) to a directory",
	"nats check":  "compare a directory of exported definitions with the code; exit 1 on drift",
	"dlq list":    "list the dead letters: requests that could not be processed, with the reason",
	"dlq show":    "show one dead letter (by its sequence) with its payload",
	"dlq replay":  "re-queue dead letters (by sequence, or --all) as new requests",
}

// groupUsage is the usage of a command made of subcommands (nats, dlq).
func groupUsage(w io.Writer, name, args string, subs []string) {
	fmt.Fprintf(w, "usage: vclq %s %s\n\n%s\n\nsubcommands:\n", name, args, describe(name))
	for _, s := range subs {
		fmt.Fprintf(w, "  %-8s %s\n", s, subcommandHelp[name+" "+s])
	}
	fmt.Fprintf(w, "\nRun `vclq %s <subcommand> -h` for its flags.\n", name)
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// helpFlag is -h/-help/--help: it records the request; parse prints the usage.
type helpFlag struct {
	stdout io.Writer
	asked  bool
}

func (h *helpFlag) String() string   { return "" }
func (h *helpFlag) Set(string) error { h.asked = true; return nil }
func (h *helpFlag) IsBoolFlag() bool { return true }

// helpAsked prints fs's usage to the help flag's stdout if -h was given.
func helpAsked(fs *flag.FlagSet) bool {
	f := fs.Lookup("h")
	if f == nil {
		return false
	}
	h, ok := f.Value.(*helpFlag)
	if !ok || !h.asked {
		return false
	}
	out := fs.Output()
	fs.SetOutput(h.stdout)
	fs.Usage()
	fs.SetOutput(out)
	return true
}

// parse parses flags placed anywhere among the arguments (after "--" everything is
// positional); ok is false (with the exit code) when the command must stop: 0 after
// printing the help, 2 for bad flags.
func parse(fs *flag.FlagSet, args []string) (code int, ok bool) {
	var positional []string
	for {
		err := fs.Parse(args)
		if helpAsked(fs) || err == flag.ErrHelp {
			return exitOK, false
		}
		if err != nil {
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
