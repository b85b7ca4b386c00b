package main

import (
	"context"
	"fmt"
	"time"

	"github.com/vclq/vclq/internal/natsconn"
	"github.com/vclq/vclq/streams"
)

// vclq nats init|export|check: JetStream assets as code.
func runNats(ctx context.Context, e *env, args []string) int {
	subs := []string{"init", "export", "check"}
	if len(args) == 0 {
		groupUsage(e.stderr, "nats", "init|export|check [flags]", subs)
		return exitUsage
	}
	if isHelp(args[0]) {
		groupUsage(e.stdout, "nats", "init|export|check [flags]", subs)
		return exitOK
	}
	sub, args := args[0], args[1:]
	var nc natsconn.Config
	var o streams.Options
	var dir string
	fs := flagSet(e, "nats "+sub, "[flags]")
	fs.IntVar(&o.Replicas, "replicas", 1, "replicas of every stream and bucket")
	fs.DurationVar(&o.AckWait, "ack-wait", 60*time.Second, "ack wait of the workers' consumer")
	fs.IntVar(&o.MaxDeliver, "max-deliver", 5, "delivery budget of a request")
	switch sub {
	case "init":
		nc.RegisterFlags(fs)
	case "export", "check":
		fs.StringVar(&dir, "dir", streams.ExportDir, "directory of the exported definitions")
	default:
		fmt.Fprintf(e.stderr, "vclq nats: unknown subcommand %q (init, export, check)\n", sub)
		return exitUsage
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	switch sub {
	case "export":
		if err := streams.Export(dir, o); err != nil {
			return fail(e, "%v", err)
		}
		fmt.Fprintf(e.stdout, "wrote %s (create with: cd %s && sh init.sh)\n", dir, dir)
	case "check":
		drift, err := streams.Diff(dir, o)
		if err != nil {
			return fail(e, "%v", err)
		}
		for _, d := range drift {
			fmt.Fprintln(e.stdout, d)
		}
		if len(drift) > 0 {
			return exitFailure
		}
		fmt.Fprintf(e.stdout, "%s matches the code\n", dir)
	case "init":
		conn, js, ok := connect(e, nc)
		if !ok {
			return exitFailure
		}
		defer conn.Close()
		cctx, cancel := commandContext(ctx, 30*time.Second)
		defer cancel()
		if err := streams.Ensure(cctx, js, o); err != nil {
			return fail(e, "%v", err)
		}
		fmt.Fprintln(e.stdout, "streams, consumers and buckets are in place")
	}
	return exitOK
}
