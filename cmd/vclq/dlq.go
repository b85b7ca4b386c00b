package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/vclq/vclq/dlq"
	"github.com/vclq/vclq/internal/natsconn"
)

// vclq dlq list|show|replay: dead letters.
func runDLQ(ctx context.Context, e *env, args []string) int {
	const dlqArgs = "list|show SEQ|replay SEQ...|replay --all [flags]"
	subs := []string{"list", "show", "replay"}
	if len(args) == 0 {
		groupUsage(e.stderr, "dlq", dlqArgs, subs)
		return exitUsage
	}
	if isHelp(args[0]) {
		groupUsage(e.stdout, "dlq", dlqArgs, subs)
		return exitOK
	}
	sub, args := args[0], args[1:]
	var nc natsconn.Config
	var asJSON, all bool
	var limit int
	fs := flagSet(e, "dlq "+sub, map[string]string{"list": "[flags]", "show": "SEQ [flags]", "replay": "SEQ...|--all [flags]"}[sub])
	nc.RegisterFlags(fs)
	fs.BoolVar(&asJSON, "json", false, "JSON output")
	switch sub {
	case "list":
		fs.IntVar(&limit, "limit", 0, "at most this many (default all, up to 10000)")
	case "show":
	case "replay":
		fs.BoolVar(&all, "all", false, "re-drive every dead letter")
	default:
		fmt.Fprintf(e.stderr, "vclq dlq: unknown subcommand %q (list, show, replay)\n", sub)
		return exitUsage
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var seqs []uint64
	for _, a := range fs.Args() {
		s, err := strconv.ParseUint(a, 10, 64)
		if err != nil || s == 0 {
			fmt.Fprintf(e.stderr, "vclq dlq %s: %q is not a sequence number\n", sub, a)
			return exitUsage
		}
		seqs = append(seqs, s)
	}
	if (sub == "show" && len(seqs) != 1) || (sub == "replay" && len(seqs) == 0 && !all) {
		fs.Usage()
		return exitUsage
	}
	conn, js, ok := connect(e, nc)
	if !ok {
		return exitFailure
	}
	defer conn.Close()
	cctx, cancel := commandContext(ctx, time.Minute)
	defer cancel()
	store, err := dlq.Open(cctx, js)
	if err != nil {
		return fail(e, "dlq: %v", err)
	}
	switch sub {
	case "list":
		list, err := store.List(cctx, limit)
		if err != nil {
			return fail(e, "dlq: %v", err)
		}
		for _, d := range list {
			if asJSON {
				printJSON(e.stdout, d)
				continue
			}
			fmt.Fprintf(e.stdout, "%6d  %s  %-22s res %-8d deliveries %d  %s\n", d.Seq, d.Time.Local().Format("2006-01-02 15:04:05"), d.OriginalSubject, d.Reservation, d.Deliveries, d.Reason)
		}
		if !asJSON {
			fmt.Fprintf(e.stdout, "%d dead letter(s)\n", len(list))
		}
	case "show":
		d, err := store.Show(cctx, seqs[0])
		if err != nil {
			return fail(e, "dlq: %v", err)
		}
		if asJSON {
			printJSON(e.stdout, d)
			return exitOK
		}
		fmt.Fprintf(e.stdout, "seq:          %d\nsubject:      %s\ntime:         %s\nreason:       %s\noriginal:     %s seq %d\ndeliveries:   %d\nreservation:  %d\nworker:       %s\npayload (%d bytes):\n%s\n",
			d.Seq, d.Subject, d.Time.Local().Format(time.RFC3339), d.Reason, d.OriginalSubject, d.OriginalSeq, d.Deliveries, d.Reservation, d.Worker, d.Size, d.Payload)
	case "replay":
		if all {
			list, err := store.List(cctx, 0)
			if err != nil {
				return fail(e, "dlq: %v", err)
			}
			for _, d := range list {
				seqs = append(seqs, d.Seq)
			}
		}
		failed := 0
		for _, s := range seqs {
			newSeq, err := store.Replay(cctx, s)
			if err != nil {
				failed++
				fmt.Fprintf(e.stderr, "vclq: dlq replay %d: %v\n", s, err)
				continue
			}
			if asJSON {
				printJSON(e.stdout, map[string]uint64{"dead_letter": s, "request_seq": newSeq})
			} else {
				fmt.Fprintf(e.stdout, "dead letter %d re-queued as request %d\n", s, newSeq)
			}
		}
		if failed > 0 {
			return exitFailure
		}
	}
	return exitOK
}
