package osconfig_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/osconfig"
)

func TestRunnerCapturesStatusStderrAndTimesOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, tg := e.guest(true)
	ctx := t.Context()

	tests := []struct {
		name       string
		cmd        osconfig.Command
		wantOut    string
		wantStatus int
		wantStderr string
		wantErr    error
		maxTook    time.Duration
	}{
		{name: "ok", cmd: osconfig.Command{Name: "echo", Line: "echo hello"}, wantOut: "hello\n"},
		{name: "stdin", cmd: osconfig.Command{Name: "cat", Line: "cat", Stdin: []byte("from stdin")}, wantOut: "from stdin"},
		{name: "exit status and stderr", cmd: osconfig.Command{Name: "fail", Line: "echo oops >&2; exit 7"},
			wantStatus: 7, wantStderr: "oops", wantErr: osconfig.ErrCommandFailed},
		{name: "timeout", cmd: osconfig.Command{Name: "sleep", Line: "sleep 30", Timeout: 500 * time.Millisecond},
			wantErr: osconfig.ErrCommandTimeout, maxTook: 5 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			res, err := e.client.RunForTest(ctx, tg, tc.cmd)
			if tc.maxTook > 0 && time.Since(start) > tc.maxTook {
				t.Fatalf("took %s", time.Since(start))
			}
			if tc.wantErr == nil {
				if err != nil || string(res.Stdout) != tc.wantOut {
					t.Fatalf("Run = %q, %v", res.Stdout, err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Run error = %v, want %v", err, tc.wantErr)
			}
			var ce *osconfig.CommandError
			if tc.wantStatus != 0 {
				if !errors.As(err, &ce) || ce.ExitStatus != tc.wantStatus || res.ExitStatus != tc.wantStatus ||
					!strings.Contains(ce.Stderr, tc.wantStderr) {
					t.Fatalf("Run = %+v, %v", res, err)
				}
			}
		})
	}
}

// Linux commands are also bounded inside the guest: a timed-out command is killed
// there, not left running after we gave up.
func TestLinuxCommandKilledInGuestOnTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	g, tg := e.guest(true)
	k, err := osconfig.New(osconfig.Config{KeyFile: mgmtKey, KnownHostsFile: e.known, CommandTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l, err := k.Linux(tg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Make the firewall step hang: a fake iptables-restore earlier in root's PATH.
	gexec(t, g, "sh", "-c", "printf '#!/bin/sh\\nexec sleep 300\\n' > /usr/local/sbin/iptables-restore && chmod +x /usr/local/sbin/iptables-restore")
	start := time.Now()
	err = l.PostLoad(t.Context())
	if !errors.Is(err, osconfig.ErrCommandTimeout) || time.Since(start) > 6*time.Second {
		t.Fatalf("PostLoad with a hanging command = %v after %s", err, time.Since(start))
	}
	waitFor(t, "the hanging command to be killed in the guest", func() bool {
		_, err := g.Exec(t.Context(), nil, "pgrep", "-x", "sleep")
		return err != nil
	})
}
