package bridge

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vclq/vclq/flow"
)

func TestSealKeyRoundTripWithWorkerSealer(t *testing.T) {
	k, err := NewSealKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	// The workers' sealer (flow.Sealer), configured with the public key file the CLI
	// writes, produces what the bridge opens.
	s, err := flow.ParseSealer(k.PublicKeyBase64() + "\n")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := s.Seal("Tr0ub4dor&3")
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.Open(sealed)
	if err != nil || string(got) != "Tr0ub4dor&3" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	other, _ := NewSealKey(nil)
	if _, err := other.Open(sealed); !errors.Is(err, ErrSealKey) {
		t.Errorf("another key opened it: %v", err)
	}
	if _, err := k.Open("not base64!"); !errors.Is(err, ErrSealKey) {
		t.Errorf("garbage: %v", err)
	}
	if strings.Contains(k.String(), strings.TrimSpace(string(k.MarshalPrivate()))) {
		t.Error("String shows the private key")
	}
}

func TestLoadSealKey(t *testing.T) {
	k, _ := NewSealKey(nil)
	dir := t.TempDir()
	path := filepath.Join(dir, "seal.key")
	if err := os.WriteFile(path, k.MarshalPrivate(), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := LoadSealKey(path)
	if err != nil || l.PublicKeyBase64() != k.PublicKeyBase64() {
		t.Fatalf("LoadSealKey: %v, public %s want %s", err, l, k)
	}
	raw := filepath.Join(dir, "raw.key")
	if err := os.WriteFile(raw, k.priv[:], 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := LoadSealKey(raw); err != nil || l.PublicKeyBase64() != k.PublicKeyBase64() {
		t.Errorf("raw key: %v", err)
	}
	for name, tc := range map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"world readable": {k.MarshalPrivate(), 0o644},
		"short":          {[]byte("c2hvcnQ=\n"), 0o600},
		"empty":          {nil, 0o600},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(p, tc.data, tc.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadSealKey(p); !errors.Is(err, ErrSealKey) {
			t.Errorf("%s: %v, want ErrSealKey", name, err)
		}
	}
}

func TestDSNAndRedact(t *testing.T) {
	dsn, err := DSN("vcl:s3cret@tcp(db:3306)/vcl")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dsn, "parseTime=true") {
		t.Errorf("DSN %s lacks parseTime", dsn)
	}
	if r := RedactDSN(dsn); strings.Contains(r, "s3cret") {
		t.Errorf("RedactDSN shows the password: %s", r)
	}
	if _, err := DSN("::not a dsn"); !errors.Is(err, ErrConfig) {
		t.Errorf("bad DSN: %v", err)
	}
}

func TestLatin1(t *testing.T) {
	if got := latin1("caf\u00e9 \u2713 ok\nnext", 100); got != "caf\u00e9 ? ok next" {
		t.Errorf("latin1 = %q", got)
	}
	if got := latin1(strings.Repeat("x", 50), 10); len(got) != 10 {
		t.Errorf("not cut: %d", len(got))
	}
}
