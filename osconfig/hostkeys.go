package osconfig

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hostKeys is the host key policy over one known_hosts file (see the package doc):
// trust on first use, then enforce, except right after our own re-image of the slot
// (ExpectNewHostKey), once.
type hostKeys struct {
	file   string
	log    zerolog.Logger
	shared HostKeyStore // nil: this node's records only

	mu    sync.Mutex      // serialises file access in this process (flock does it across processes)
	rekey map[string]bool // slot -> a changed key may be accepted once
}

func newHostKeys(file string, log zerolog.Logger) (*hostKeys, error) {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(file, os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return nil, err
	}
	f.Close()
	if _, err := knownhosts.New(file); err != nil {
		return nil, fmt.Errorf("known_hosts %s: %w", file, err)
	}
	return &hostKeys{file: file, log: log, rekey: map[string]bool{}}, nil
}

// HostKeyStore holds, per slot, the host key the management node that last loaded the
// slot recorded (its address and key), so that another node taking over the slot's
// next request accepts the re-imaged guest's new key instead of refusing it as
// changed. Whoever can write it is trusted like a node: it is the queue's own
// JetStream (sharedkeys), behind the same credentials.
type HostKeyStore interface {
	// GetHostKey returns the slot's record; ok is false when there is none.
	GetHostKey(ctx context.Context, slot string) (address string, key ssh.PublicKey, ok bool, err error)
	// PutHostKey records the slot's key at address.
	PutHostKey(ctx context.Context, slot, address string, key ssh.PublicKey) error
}

// sharedTimeout bounds one call to the shared host key store.
const sharedTimeout = 5 * time.Second

// fleetKey is the shared store's key for slot at address (nil if none, another
// address, or the store cannot be read).
func (h *hostKeys) fleetKey(slot, address string) ssh.PublicKey {
	if h.shared == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
	defer cancel()
	addr, key, ok, err := h.shared.GetHostKey(ctx, slot)
	if err != nil {
		h.log.Warn().Err(err).Str("computer", slot).Msg("shared host keys: read failed; using this node's records only")
		return nil
	}
	if !ok || addr != knownhosts.Normalize(address) {
		return nil
	}
	return key
}

// share records key for slot in the shared store (a failure is logged: this node's
// record stands, and another node falls back to refusing the key).
func (h *hostKeys) share(slot, address string, key ssh.PublicKey) {
	if h.shared == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
	defer cancel()
	if err := h.shared.PutHostKey(ctx, slot, knownhosts.Normalize(address), key); err != nil {
		h.log.Warn().Err(err).Str("computer", slot).Msg("shared host keys: write failed")
	}
}

func sameKey(a, b ssh.PublicKey) bool {
	return a != nil && b != nil && bytes.Equal(a.Marshal(), b.Marshal())
}

// expect allows the next host key check of slot to accept a changed key.
func (h *hostKeys) expect(slot string) {
	h.mu.Lock()
	h.rekey[slot] = true
	h.mu.Unlock()
}

// settle withdraws an announced re-image of slot.
func (h *hostKeys) settle(slot string) {
	h.mu.Lock()
	delete(h.rekey, slot)
	h.mu.Unlock()
}

// pending reports whether a rekey is allowed for slot (not consuming it).
func (h *hostKeys) pending(slot string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rekey[slot]
}

// knownTypes returns the key types recorded for address (e.g. "ssh-ed25519").
func (h *hostKeys) knownTypes(address string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	b, err := os.ReadFile(h.file)
	if err != nil {
		return nil
	}
	host := knownhosts.Normalize(address)
	var types []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], "@") {
			continue
		}
		for _, p := range strings.Split(f[0], ",") {
			if p == host {
				types = append(types, f[1])
			}
		}
	}
	return types
}

// callback returns the HostKeyCallback for one connection to slot.
func (h *hostKeys) callback(slot string) ssh.HostKeyCallback {
	return func(address string, remote net.Addr, key ssh.PublicKey) error {
		recorded, err := h.check(slot, address, remote, key)
		if recorded {
			// Shared after the locks are released: a slow store delays only this
			// connection, not every host key check of the node.
			h.share(slot, address, key)
		}
		return err
	}
}

// check applies the policy to key under the locks; recorded reports that this node
// recorded key for slot (first contact or its own re-image), for sharing.
func (h *hostKeys) check(slot, address string, remote net.Addr, key ssh.PublicKey) (recorded bool, _ error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	unlock, err := flock(h.file + ".lock")
	if err != nil {
		return false, err
	}
	defer unlock()

	known, err := knownhosts.New(h.file)
	if err != nil {
		return false, fmt.Errorf("known_hosts %s: %w", h.file, err)
	}
	err = known(address, remote, key)
	var kerr *knownhosts.KeyError
	switch {
	case err == nil:
		// The recorded key: an announced re-image stays announced (the old guest may
		// still answer for a moment, or the image may carry the same key) until a
		// changed key uses it or the load settles it.
		return false, nil
	case errors.As(err, &kerr) && len(kerr.Want) == 0:
		// First contact with this address: record the key, unless another node
		// recorded a different one for the slot (and this is not our re-image).
		if !h.rekey[slot] {
			if fk := h.fleetKey(slot, address); fk != nil && !sameKey(fk, key) {
				return false, fmt.Errorf("%w: %s presents %s, but the management nodes recorded %s for slot %s",
					ErrHostKeyChanged, address, ssh.FingerprintSHA256(key), ssh.FingerprintSHA256(fk), slot)
			}
		}
		if err := h.replace(address, key); err != nil {
			return false, err
		}
		delete(h.rekey, slot)
		h.log.Info().Str("computer", slot).Str("host", address).Str("host_key", ssh.FingerprintSHA256(key)).Msg("host key recorded on first contact")
		return true, nil
	case errors.As(err, &kerr) && h.rekey[slot]:
		if err := h.replace(address, key); err != nil {
			return false, err
		}
		delete(h.rekey, slot)
		h.log.Warn().Str("computer", slot).Str("host", address).Str("host_key", ssh.FingerprintSHA256(key)).
			Str("old_host_key", ssh.FingerprintSHA256(kerr.Want[0].Key)).Msg("host key replaced after our re-image of the slot")
		return true, nil
	case errors.As(err, &kerr):
		if fk := h.fleetKey(slot, address); sameKey(fk, key) {
			// Another management node re-imaged the slot and recorded this key.
			if err := h.replace(address, key); err != nil {
				return false, err
			}
			h.log.Info().Str("computer", slot).Str("host", address).Str("host_key", ssh.FingerprintSHA256(key)).
				Str("old_host_key", ssh.FingerprintSHA256(kerr.Want[0].Key)).Msg("host key taken from another management node's record")
			return false, nil
		}
		return false, fmt.Errorf("%w: %s presents %s, recorded %s, and no re-image of slot %s was announced",
			ErrHostKeyChanged, address, ssh.FingerprintSHA256(key), ssh.FingerprintSHA256(kerr.Want[0].Key), slot)
	default:
		return false, fmt.Errorf("%w: %s: %v", ErrHostKeyChanged, address, err)
	}
}

// replace rewrites the file without address's lines, plus one line with key.
// Called with the lock held.
func (h *hostKeys) replace(address string, key ssh.PublicKey) error {
	host := knownhosts.Normalize(address)
	old, err := os.ReadFile(h.file)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(old))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") && !strings.HasPrefix(f[0], "@") {
			drop := false
			for _, p := range strings.Split(f[0], ",") {
				if p == host {
					drop = true
				}
			}
			if drop {
				continue
			}
		}
		out.WriteString(line)
		out.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return err
	}
	out.WriteString(knownhosts.Line([]string{address}, key))
	out.WriteByte('\n')
	tmp := h.file + ".tmp"
	if err := os.WriteFile(tmp, out.Bytes(), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, h.file)
}

// flock takes an exclusive lock on path (created if missing) across processes.
func flock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// hostKeyAlgorithms are the algorithms to offer for recorded key types, so the guest
// presents the key we know rather than another of its keys.
func hostKeyAlgorithms(types []string) []string {
	var algos []string
	for _, t := range types {
		switch t {
		case ssh.KeyAlgoRSA:
			algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			algos = append(algos, t)
		}
	}
	return algos
}

// preferredHostKeyAlgorithms is the order for a first contact: ed25519 first.
var preferredHostKeyAlgorithms = []string{
	ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}
