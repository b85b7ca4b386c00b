package main

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/vclq/vclq/internal/testutil"
)

// Every subcommand's -h and --help prints a usage naming it, with its flags, to stdout
// and exits 0.
func TestEverySubcommandHelp(t *testing.T) {
	cases := [][]string{
		{"version"}, {"worker"}, {"dev"}, {"submit"}, {"events"}, {"status"}, {"watch"}, {"bench"}, {"bridge"},
		{"nats"}, {"nats", "init"}, {"nats", "export"}, {"nats", "check"},
		{"dlq"}, {"dlq", "list"}, {"dlq", "show"}, {"dlq", "replay"},
	}
	covered := map[string]bool{}
	for _, c := range cases {
		covered[c[0]] = true
	}
	for name := range commands() {
		if !covered[name] {
			t.Errorf("subcommand %q has no help case", name)
		}
	}
	checked := 0
	for _, c := range cases {
		for _, h := range []string{"-h", "--help"} {
			args := append(append([]string{}, c...), h)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				code, out, errs := vclqRun(t, "", args...)
				checked++
				if code != exitOK {
					t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, out, errs)
				}
				want := "usage: vclq " + strings.Join(c, " ")
				if !strings.Contains(out, want) {
					t.Errorf("stdout does not name the subcommand (%q):\n%s\nstderr:\n%s", want, out, errs)
				}
				if strings.Contains(out, "Usage of") || strings.Contains(errs, "unknown subcommand") {
					t.Errorf("bare usage:\n%s%s", out, errs)
				}
				if len(strings.Split(strings.TrimSpace(out), "\n")) < 3 {
					t.Errorf("usage too short to say what the command does:\n%s", out)
				}
			})
		}
	}
	t.Logf("checked %d help invocations", checked)
}

// The worker's help tells the handler default as it is: flow with a flow section.
func TestWorkerHelpHandlerDefault(t *testing.T) {
	_, out, _ := vclqRun(t, "", "worker", "-h")
	for _, want := range []string{"-handler", "-replicas", "-no-ensure", "-tls-ca", "flow section"} {
		if !strings.Contains(out, want) {
			t.Errorf("worker help lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, `(default "sim:`) {
		t.Errorf("worker help claims a sim handler default:\n%s", out)
	}
}

// version prints the module version and the VCS revision of the build, not "dev".
func TestVersion(t *testing.T) {
	code, out, errs := vclqRun(t, "", "version")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if strings.TrimSpace(out) == "vclq dev" || !strings.HasPrefix(out, "vclq ") {
		t.Fatalf("version %q", out)
	}
	// Test binaries carry no VCS stamp; the module line is enough here (the built
	// binary's revision is checked by TestVersionOfBuiltBinary).
	if !strings.Contains(out, "github.com/vclq/vclq") {
		t.Errorf("version %q does not name the module", out)
	}
}

// A build stamped by git reports its revision and a modified work tree.
func TestVersionFromBuildInfo(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/vclq/vclq", Version: "(devel)"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "4e35bf9c0123456789abcdef"}, {Key: "vcs.modified", Value: "true"}}}
	bi := fromBuildInfo(info)
	if bi.Revision != "4e35bf9c0123456789abcdef" || !bi.Modified || bi.Version != "(devel)" {
		t.Fatalf("build info %+v", bi)
	}
	if got := fromBuildInfo(nil); got.Version == "dev" || got.Module == "" {
		t.Fatalf("no build info: %+v", got)
	}
}

// Logs to a pipe or file carry no terminal colour codes.
func TestLoggerColoursOnlyOnATerminal(t *testing.T) {
	t.Setenv("VCLQ_LOG_FORMAT", "")
	for _, tc := range []struct {
		name string
		w    interface {
			Write([]byte) (int, error)
			String() string
		}
		colour bool
	}{{"pipe", &testutil.SyncBuffer{}, false}, {"terminal", &fakeTerminal{cols: 80}, true}} {
		log := newLogger(tc.w)
		log.Warn().Str("k", "v").Msg("hello")
		if got := strings.Contains(tc.w.String(), "\x1b["); got != tc.colour {
			t.Errorf("%s: colour codes %t, want %t: %q", tc.name, got, tc.colour, tc.w.String())
		}
	}
}
