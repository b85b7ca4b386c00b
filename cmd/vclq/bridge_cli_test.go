package main

import (
	"bytes"
	"context"
	"database/sql"
	"os"
	"strings"
	"testing"
	"time"

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
