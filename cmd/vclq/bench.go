package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/vclq/vclq/bench"
)

// vclq bench [suite...]: run the measurement suites and write BENCHMARKS.md.
func runBench(ctx context.Context, e *env, args []string) int {
	var out, cpuProfile string
	fs := flagSet(e, "bench", "[--out FILE] [--cpuprofile FILE] [suite...]")
	fs.StringVar(&out, "out", "docs/BENCHMARKS.md", "Markdown file to write (- for stdout)")
	fs.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of this process (server, clients, simulators) to FILE")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			fmt.Fprintf(e.stderr, "bench: %v\n", err)
			return exitUsage
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(e.stderr, "bench: %v\n", err)
			return exitFailure
		}
		defer pprof.StopCPUProfile()
	}
	want := map[string]bool{}
	for _, a := range fs.Args() {
		want[a] = true
	}
	var doc bytes.Buffer
	bench.Header(&doc, "vclq bench "+strings.Join(args, " "))
	failed := 0
	for _, s := range bench.Suites() {
		if len(want) > 0 && !want[s.Name] {
			continue
		}
		fmt.Fprintf(e.stderr, "bench: %s...\n", s.Name)
		start := time.Now()
		var sec bytes.Buffer
		if err := s.Run(ctx, &sec); err != nil {
			failed++
			fmt.Fprintf(&sec, "\n**Suite %s failed: %v**\n", s.Name, err)
			fmt.Fprintf(e.stderr, "bench: %s failed: %v\n", s.Name, err)
		}
		doc.Write(sec.Bytes())
		doc.WriteString("\n")
		fmt.Fprintf(e.stderr, "bench: %s done in %s\n", s.Name, time.Since(start).Round(time.Second))
	}
	if out == "-" {
		_, _ = e.stdout.Write(doc.Bytes())
	} else if err := os.WriteFile(out, doc.Bytes(), 0o644); err != nil {
		return fail(e, "bench: %v", err)
	} else {
		fmt.Fprintf(e.stdout, "wrote %s\n", out)
	}
	if failed > 0 {
		return exitFailure
	}
	return exitOK
}
