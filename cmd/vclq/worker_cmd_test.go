package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Configuration precedence: file, then environment, then flags.
func TestWorkerConfigPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "worker.json")
	if err := os.WriteFile(path, []byte(`{"nats":{"url":"nats://file:4222"},"id":"from-file","concurrency":3,"lease_ttl":"20s","handler":"sim:work=1s"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VCLQ_CONCURRENCY", "5")
	t.Setenv("VCLQ_LEASE_TTL", "")
	os.Unsetenv("VCLQ_LEASE_TTL")
	args := []string{"--config", path, "--id", "from-flag"}
	c, err := loadWorkerConfig(args)
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	c.flags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	p := c.pool()
	if p.ID != "from-flag" || p.Concurrency != 5 || p.LeaseTTL != 20*time.Second || c.Handler != "sim:work=1s" || c.NATS.URL != "nats://file:4222" {
		t.Errorf("config %+v / pool %+v", c, p)
	}
	if p.AckWait != defaultAckWait || p.MaxDeliver != defaultMaxDeliver {
		t.Errorf("stream-side defaults: ack wait %s, max deliver %d", p.AckWait, p.MaxDeliver)
	}
	if _, err := loadWorkerConfig([]string{"--config=" + filepath.Join(t.TempDir(), "missing.json")}); err == nil {
		t.Error("missing config file accepted")
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	_ = os.WriteFile(bad, []byte(`{"concurency":3}`), 0o600)
	if _, err := loadWorkerConfig([]string{"--config", bad}); err == nil {
		t.Error("misspelt key accepted")
	}
}

func TestWorkerRejectsUnknownHandler(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"worker", "--handler", "esx:nope"}, strings.NewReader(""), &out, &errb)
	if code != exitUsage || !strings.Contains(errb.String(), "unknown handler") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}
