package osconfig

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/ssh"
)

func hostKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The re-image allowance survives checks that find the recorded key (the old guest
// answering for a moment), is used up by the changed key, and can be withdrawn.
func TestHostKeyAllowanceLifecycle(t *testing.T) {
	h, err := newHostKeys(filepath.Join(t.TempDir(), "known_hosts"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	addr := "198.51.100.10:22"
	remote := &net.TCPAddr{IP: net.ParseIP("198.51.100.10"), Port: 22}
	check := func(k ssh.PublicKey) error { return h.callback("vm001")(addr, remote, k) }
	old, fresh, other := hostKey(t), hostKey(t), hostKey(t)
	if err := check(old); err != nil {
		t.Fatalf("first contact: %v", err)
	}
	h.expect("vm001")
	if err := check(old); err != nil || !h.pending("vm001") {
		t.Fatalf("the old key used up the allowance (err %v, pending %t)", err, h.pending("vm001"))
	}
	if err := check(fresh); err != nil {
		t.Fatalf("changed key after an announced re-image: %v", err)
	}
	if h.pending("vm001") {
		t.Fatal("allowance not used up by the changed key")
	}
	if err := check(other); !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("a second change was accepted: %v", err)
	}
	h.expect("vm001")
	h.settle("vm001")
	if err := check(other); !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("a change after the load settled was accepted: %v", err)
	}
}
