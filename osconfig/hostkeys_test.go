package osconfig

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/ssh"

	"github.com/vclq/vclq/internal/testutil"
)

func hostKey(t *testing.T) ssh.PublicKey { return testutil.SSHKey(t) }

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

// memStore is a HostKeyStore in memory, shared by the "nodes" of a test.
type memStore struct {
	mu   sync.Mutex
	recs map[string]memRec
	down bool // reads and writes fail
}

type memRec struct {
	addr string
	key  ssh.PublicKey
}

func (m *memStore) GetHostKey(_ context.Context, slot string) (string, ssh.PublicKey, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return "", nil, false, errors.New("store down")
	}
	r, ok := m.recs[slot]
	return r.addr, r.key, ok, nil
}

func (m *memStore) PutHostKey(_ context.Context, slot, addr string, key ssh.PublicKey) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return errors.New("store down")
	}
	m.recs[slot] = memRec{addr, key}
	return nil
}

// Several management nodes, each with its own known_hosts, share what they record:
// after node A re-imaged a slot, node B (which knew the old key) accepts the new key
// from A's record instead of refusing it, and still refuses any other key.
func TestHostKeysSharedBetweenNodes(t *testing.T) {
	store := &memStore{recs: map[string]memRec{}}
	node := func() *hostKeys {
		h, err := newHostKeys(filepath.Join(t.TempDir(), "known_hosts"), zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		h.shared = store
		return h
	}
	a, b, c := node(), node(), node()
	addr := "198.51.100.10:22"
	remote := &net.TCPAddr{IP: net.ParseIP("198.51.100.10"), Port: 22}
	check := func(h *hostKeys, k ssh.PublicKey) error { return h.callback("vm001")(addr, remote, k) }
	k1, k2, rogue := hostKey(t), hostKey(t), hostKey(t)

	// A loads the slot (first contact), B then serves a request on it.
	if err := check(a, k1); err != nil {
		t.Fatal(err)
	}
	if err := check(b, k1); err != nil {
		t.Fatalf("B, first contact with A's key: %v", err)
	}
	// A re-images the slot: new key.
	a.expect("vm001")
	if err := check(a, k2); err != nil {
		t.Fatal(err)
	}
	if err := check(b, k2); err != nil {
		t.Fatalf("B after A's re-image: %v", err)
	}
	if err := check(b, k2); err != nil {
		t.Fatalf("B again (its own record now): %v", err)
	}
	// Any other key is still refused, by B and by a node that never saw the slot.
	if err := check(b, rogue); !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("B accepted a key no node recorded: %v", err)
	}
	if err := check(c, rogue); !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("C's first contact accepted a key other than the nodes' record: %v", err)
	}
	if err := check(c, k2); err != nil {
		t.Fatalf("C, first contact with the recorded key: %v", err)
	}
	// The store down: a node keeps its own records and refuses changes it cannot
	// check.
	store.down = true
	a.expect("vm001")
	k3 := hostKey(t)
	if err := check(a, k3); err != nil {
		t.Fatalf("A's own re-image with the store down: %v", err)
	}
	if err := check(b, k3); !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("B accepted a changed key it could not check: %v", err)
	}
}
