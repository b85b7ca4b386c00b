package flow

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"

	"golang.org/x/crypto/nacl/box"
)

// Sealer seals user passwords for the bridge: a NaCl anonymous box
// (box.SealAnonymous) to the bridge's Curve25519 public key, base64. Only the bridge,
// holding the private key, can open it and write it into reservation.pw; nothing on a
// stream or in a log holds a password in clear.
type Sealer struct{ pub [32]byte }

// ParseSealer reads a public key: standard base64 of 32 bytes.
func ParseSealer(s string) (*Sealer, error) {
	raw, err := base64.StdEncoding.Strict().DecodeString(string(bytes.TrimSpace([]byte(s))))
	if err != nil || len(raw) != 32 {
		return nil, errors.New("seal key: not base64 of a 32-byte Curve25519 public key")
	}
	var k Sealer
	copy(k.pub[:], raw)
	return &k, nil
}

// LoadSealer reads a public key file (see ParseSealer).
func LoadSealer(path string) (*Sealer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("seal key: %w", err)
	}
	return ParseSealer(string(b))
}

// Seal returns the sealed, base64-encoded password.
func (s *Sealer) Seal(password string) (string, error) {
	out, err := box.SealAnonymous(nil, []byte(password), &s.pub, rand.Reader)
	if err != nil {
		return "", fmt.Errorf("seal password: %w", err)
	}
	return base64.StdEncoding.EncodeToString(out), nil
}
