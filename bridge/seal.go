package bridge

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
)

// SealKey is the bridge's Curve25519 key pair. Workers seal user passwords to its
// public key with NaCl anonymous boxes (box.SealAnonymous); only the bridge, which
// writes them into reservation.pw, can open them. Its String never shows the private
// half.
type SealKey struct {
	pub, priv [32]byte
}

// NewSealKey generates a key pair from r (crypto/rand when nil).
func NewSealKey(r io.Reader) (*SealKey, error) {
	if r == nil {
		r = rand.Reader
	}
	pub, priv, err := box.GenerateKey(r)
	if err != nil {
		return nil, fmt.Errorf("%w: generate: %w", ErrSealKey, err)
	}
	return &SealKey{pub: *pub, priv: *priv}, nil
}

// ParseSealKey reads a private key: standard base64 of 32 bytes (surrounding
// whitespace ignored) or the 32 raw bytes.
func ParseSealKey(data []byte) (*SealKey, error) {
	var priv [32]byte
	if trimmed := bytes.TrimSpace(data); len(trimmed) == 44 {
		if raw, err := base64.StdEncoding.Strict().DecodeString(string(trimmed)); err == nil && len(raw) == 32 {
			copy(priv[:], raw)
			return fromPrivate(priv)
		}
	}
	if len(data) == 32 {
		copy(priv[:], data)
		return fromPrivate(priv)
	}
	return nil, fmt.Errorf("%w: not base64 of 32 bytes nor 32 raw bytes", ErrSealKey)
}

// LoadSealKey reads a private key file (see ParseSealKey). It refuses a file that
// others than its owner can read.
func LoadSealKey(path string) (*SealKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSealKey, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s is readable by group or others (mode %v); chmod 600 it", ErrSealKey, path, st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSealKey, err)
	}
	k, err := ParseSealKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

func fromPrivate(priv [32]byte) (*SealKey, error) {
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSealKey, err)
	}
	k := &SealKey{priv: priv}
	copy(k.pub[:], pub)
	return k, nil
}

// PublicKey is the key workers seal to.
func (k *SealKey) PublicKey() *[32]byte { p := k.pub; return &p }

// PublicKeyBase64 is PublicKey in standard base64, as workers are configured with it.
func (k *SealKey) PublicKeyBase64() string { return base64.StdEncoding.EncodeToString(k.pub[:]) }

// MarshalPrivate is the private key in the file format LoadSealKey reads.
func (k *SealKey) MarshalPrivate() []byte {
	return []byte(base64.StdEncoding.EncodeToString(k.priv[:]) + "\n")
}

// String shows the public key only.
func (k *SealKey) String() string { return "SealKey(public " + k.PublicKeyBase64() + ")" }

// Open opens a base64 anonymous box sealed to k.
func (k *SealKey) Open(sealed string) ([]byte, error) {
	raw, err := base64.StdEncoding.Strict().DecodeString(sealed)
	if err != nil {
		return nil, fmt.Errorf("%w: sealed value is not base64", ErrSealKey)
	}
	out, ok := box.OpenAnonymous(nil, raw, &k.pub, &k.priv)
	if !ok {
		return nil, fmt.Errorf("%w: sealed value does not open with this key (public %s)", ErrSealKey, k.PublicKeyBase64())
	}
	return out, nil
}

// SealPassword seals a password to a bridge public key, as a worker does for
// messages.SealedPassword.Sealed.
func SealPassword(pub *[32]byte, password []byte) (string, error) {
	out, err := box.SealAnonymous(nil, password, pub, rand.Reader)
	if err != nil {
		return "", fmt.Errorf("%w: seal: %w", ErrSealKey, err)
	}
	return base64.StdEncoding.EncodeToString(out), nil
}
