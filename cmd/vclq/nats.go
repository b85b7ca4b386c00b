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
	var server bool
	fs := flagSet(e, "nats "+sub, "[flags]")
	fs.IntVar(&o.Replicas, "replicas", 1, "replicas of every stream and bucket (init: applied to existing ones too, raising or lowering them)")
	fs.DurationVar(&o.AckWait, "ack-wait", 60*time.Second, "ack wait of the workers' consumer")
	fs.IntVar(&o.MaxDeliver, "max-deliver", 5, "delivery budget of a request")
	switch sub {
	case "init":
		nc.RegisterFlags(fs)
	case "export":
		fs.StringVar(&dir, "dir", streams.ExportDir, "directory of the exported definitions")
	case "check":
		fs.StringVar(&dir, "dir", streams.ExportDir, `directory of the exported definitions ("": compare only the server, with --server)`)
		fs.BoolVar(&server, "server", false, "also compare the assets on the NATS server with the code (read only)")
		nc.RegisterFlags(fs)
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
		return natsCheck(ctx, e, nc, dir, server, o)
	case "init":
		return natsInit(ctx, e, nc, o)
	}
	return exitOK
}

// natsInit is `vclq nats init`: streams.Apply, the one way to change existing assets
// (replica counts included); it prints what it changed.
func natsInit(ctx context.Context, e *env, nc natsconn.Config, o streams.Options) int {
	conn, js, ok := connect(e, nc)
	if !ok {
		return exitFailure
	}
	defer conn.Close()
	cctx, cancel := commandContext(ctx, streams.EnsureTimeout)
	defer cancel()
	diffs, err := streams.Apply(cctx, js, o)
	for _, d := range diffs {
		fmt.Fprintln(e.stdout, d)
	}
	if err != nil {
		return fail(e, "%v", err)
	}
	fmt.Fprintf(e.stdout, "streams, consumers and buckets are in place (%d changed)\n", len(diffs))
	return exitOK
}

// natsCheck is `vclq nats check`: the exported files, and with --server the assets on
// the server, against the code. It exits 1 when anything differs.
// An empty dir compares only the server (a site at --replicas 3 differs from the
// repository's export, which is at one replica).
func natsCheck(ctx context.Context, e *env, nc natsconn.Config, dir string, server bool, o streams.Options) int {
	if dir == "" && !server {
		fmt.Fprintln(e.stderr, `vclq nats check: --dir "" compares nothing without --server`)
		return exitUsage
	}
	var drift []string
	if dir != "" {
		var err error
		if drift, err = streams.Diff(dir, o); err != nil {
			return fail(e, "%v", err)
		}
		for _, d := range drift {
			fmt.Fprintln(e.stdout, d)
		}
		if len(drift) == 0 {
			fmt.Fprintf(e.stdout, "%s matches the code\n", dir)
		}
	}
	var diffs []streams.Difference
	if server {
		conn, js, ok := connect(e, nc)
		if !ok {
			return exitFailure
		}
		defer conn.Close()
		cctx, cancel := commandContext(ctx, streams.EnsureTimeout)
		defer cancel()
		var err error
		if diffs, err = streams.Compare(cctx, js, o); err != nil {
			return fail(e, "%v", err)
		}
		for _, d := range diffs {
			if d.Field == streams.Missing {
				fmt.Fprintf(e.stdout, "server: %s: missing\n", d.Asset)
				continue
			}
			fmt.Fprintf(e.stdout, "server: %s: %s is %s, expected %s\n", d.Asset, d.Field, d.Found, d.Expected)
		}
		if len(diffs) == 0 {
			fmt.Fprintln(e.stdout, "the server's streams, consumers and buckets match the code")
		}
	}
	if len(drift)+len(diffs) > 0 {
		return exitFailure
	}
	return exitOK
}
