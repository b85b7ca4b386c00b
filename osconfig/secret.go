package osconfig

import (
	"crypto/rand"
	"fmt"
	"math/big"
)

// Secret is a password. It prints, formats and marshals as "[redacted]" so that it
// cannot end up in a log or an error by accident; Reveal gives the value.
type Secret string

// String returns "[redacted]".
func (Secret) String() string { return "[redacted]" }

// GoString returns "[redacted]".
func (Secret) GoString() string { return "[redacted]" }

// Format writes "[redacted]" whatever the verb (%d, %x included).
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte("[redacted]")) }

// MarshalText returns "[redacted]" (zerolog, JSON).
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

// PasswordLength is the length of generated passwords (VCL uses 15; more is better).
const PasswordLength = 20

// passwordAlphabet avoids ':' (chpasswd's separator), quotes, backslash and spaces,
// so a password is one safe token in every tool that takes it.
const passwordAlphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-_.+=@%"

// NewPassword returns a random password of PasswordLength characters from
// crypto/rand.
func NewPassword() (Secret, error) {
	b := make([]byte, PasswordLength)
	max := big.NewInt(int64(len(passwordAlphabet)))
	for i := range b {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", err
		}
		b[i] = passwordAlphabet[n.Int64()]
	}
	return Secret(b), nil
}
