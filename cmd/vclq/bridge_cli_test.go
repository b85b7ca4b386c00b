package main

import (
	"bytes"
	"context"
	"database/sql"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/bridge"
	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/streams"
)

func TestBridgeCLIUsageErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Setenv("VCLQ_BRIDGE_MYSQL", "")
	t.Setenv("VCLQ_MANAGEMENT_NODE", "")
	t.Setenv("VCLQ_SEAL_KEY", "")
	key := t.TempDir() + "/k"
	if err := os.WriteFile(key, []byte("bm90IGEga2V5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"no flags":        {"bridge"},
		"bad node":        {"bridge", "--mysql", "root@tcp(127.0.0.1:1)/vcl", "--management-node", "abc"},
		"zero node":       {"bridge", "--mysql", "root@tcp(127.0.0.1:1)/vcl", "--management-node", "0"},
		"bad DSN":         {"bridge", "--mysql", "::::", "--management-node", "1"},
		"bad seal key":    {"bridge", "--mysql", "root@tcp(127.0.0.1:1)/vcl", "--management-node", "1", "--seal-key", key},
		"stray arguments": {"bridge", "--mysql", "root@tcp(127.0.0.1:1)/vcl", "--management-node", "1", "extra"},
	} {
		var stderr bytes.Buffer
		if code := run(ctx, args, strings.NewReader(""), &bytes.Buffer{}, &stderr); code != exitUsage {
			t.Errorf("%s: exit %d, want %d; stderr: %s", name, code, exitUsage, stderr.String())
		}
	}
}

// TestBridgeCLIRefusesANonVCLDatabase: a database without VCL's tables is a
// configuration error (exit 2), not something to wait out.
func TestBridgeCLIRefusesANonVCLDatabase(t *testing.T) {
	if err := bt.Reachable(context.Background()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("MariaDB unreachable under CI: %v", err)
		}
		t.Skipf("MariaDB at %s unreachable: %v", bt.Addr(), err)
	}
	admin, err := sql.Open("mysql", bt.RootDSN("", false))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	name := "vclq_bridge_cli_empty_" + strings.ReplaceAll(t.Name(), "/", "_")[:10] + time.Now().Format("150405")
	if _, err := admin.Exec("CREATE DATABASE `" + name + "`"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec("DROP DATABASE IF EXISTS `" + name + "`") })
	j := testutil.StartVCLJetStream(t, streams.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	code := run(ctx, []string{"bridge", "--nats", j.URL, "--mysql", bt.RootDSN(name, false), "--management-node", "1"},
		strings.NewReader(""), &bytes.Buffer{}, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), "schema") {
		t.Errorf("exit %d, stderr %q; want %d and a schema error", code, stderr.String(), exitUsage)
	}
}

// TestBridgeChecksTheDatabaseBeforeNATS (issue 9 item 6): a bridge whose database
// login fails exits non-zero and has not touched NATS: no stream was created.
func TestBridgeChecksTheDatabaseBeforeNATS(t *testing.T) {
	unreachable := freeLoopbackAddr(t)
	mariaDB := bt.Reachable(context.Background()) == nil
	tests := []struct {
		name      string
		dsn       string
		needsDB   bool
		want      int
		maxTime   time.Duration
		wantInErr string
	}{
		{name: "wrong password", dsn: "root:wrong-password@tcp(" + bt.Addr() + ")/vcl", needsDB: true, want: exitUsage, maxTime: 10 * time.Second, wantInErr: "login refused"},
		{name: "unknown database", dsn: "root@tcp(" + bt.Addr() + ")/vclq_no_such_database", needsDB: true, want: exitUsage, maxTime: 10 * time.Second, wantInErr: "login refused"},
		{name: "unreachable port", dsn: "root@tcp(" + unreachable + ")/vcl", want: exitFailure, maxTime: 15 * time.Second, wantInErr: "database"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needsDB && !mariaDB {
				if os.Getenv("CI") != "" {
					t.Fatalf("MariaDB at %s unreachable under CI", bt.Addr())
				}
				t.Skipf("MariaDB at %s unreachable", bt.Addr())
			}
			j := testutil.StartJetStream(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var stderr bytes.Buffer
			start := time.Now()
			code := run(ctx, []string{"bridge", "--nats", j.URL, "--mysql", tc.dsn, "--management-node", "1", "--startup-timeout", "3s"},
				strings.NewReader(""), &bytes.Buffer{}, &stderr)
			elapsed := time.Since(start)
			names := streamNames(t, j)
			t.Logf("exit %d after %s, %d streams on the server; stderr: %s", code, elapsed.Round(time.Millisecond), len(names), strings.TrimSpace(stderr.String()))
			if code != tc.want || !strings.Contains(stderr.String(), tc.wantInErr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tc.want, tc.wantInErr)
			}
			if elapsed > tc.maxTime {
				t.Errorf("took %s, want at most %s", elapsed, tc.maxTime)
			}
			if len(names) != 0 {
				t.Errorf("the bridge created streams %v before its database login worked", names)
			}
		})
	}
}

// freeLoopbackAddr is a loopback address nothing listens on.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// streamNames lists the server's streams, with a context of its own.
func streamNames(t *testing.T, j *testutil.JetStream) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lister := j.JS.StreamNames(ctx)
	var names []string
	for n := range lister.Name() {
		names = append(names, n)
	}
	if err := lister.Err(); err != nil {
		t.Fatalf("list streams: %v", err)
	}
	return names
}

// TestBridgeMissingGrantExits2 (issue 11 item 1): a bridge whose account lacks one
// documented grant (UPDATE on vclq_outbox, on reservationaccounts) exits 2 within
// seconds, names the grant to paste, and has not touched NATS.
func TestBridgeMissingGrantExits2(t *testing.T) {
	if err := bt.Reachable(context.Background()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("MariaDB unreachable under CI: %v", err)
		}
		t.Skipf("MariaDB at %s unreachable: %v", bt.Addr(), err)
	}
	grants, err := bt.DocumentedGrants()
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"vclq_outbox", "reservationaccounts"} {
		t.Run(table, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			d, err := bt.Create(ctx, bt.SchemaOwn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(d.Drop)
			if err := bt.LoadSite(ctx, d.SQL, 0); err != nil {
				t.Fatal(err)
			}
			// The bridge's tables exist (a bridge ran before): only UPDATE is missing.
			if err := bridge.EnsureTables(ctx, d.SQL); err != nil {
				t.Fatal(err)
			}
			var kept []string
			for _, g := range grants {
				if strings.Contains(g, "`"+table+"`") {
					g = strings.Replace(g, "UPDATE, ", "", 1)
					g = strings.Replace(g, ", UPDATE ON", " ON", 1)
				}
				kept = append(kept, g)
			}
			u, drop, err := bt.CreateUser(ctx, d.Name, kept)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(drop)
			j := testutil.StartJetStream(t)
			var stderr bytes.Buffer
			start := time.Now()
			code := run(ctx, []string{"bridge", "--nats", j.URL, "--mysql", u.DSN, "--management-node", "100", "--startup-timeout", "5s"},
				strings.NewReader(""), &bytes.Buffer{}, &stderr)
			elapsed := time.Since(start)
			want := "GRANT UPDATE ON `" + d.Name + "`.`" + table + "` TO " + u.Quoted + ";"
			t.Logf("exit %d after %s; stderr: %s", code, elapsed.Round(time.Millisecond), strings.TrimSpace(stderr.String()))
			if code != exitUsage || !strings.Contains(stderr.String(), want) || strings.Count(stderr.String(), "GRANT") != 1 {
				t.Errorf("exit %d, stderr %q; want %d naming %s only", code, stderr.String(), exitUsage, want)
			}
			if elapsed > 10*time.Second {
				t.Errorf("took %s", elapsed)
			}
			if names := streamNames(t, j); len(names) != 0 {
				t.Errorf("streams created: %v", names)
			}
		})
	}
}
