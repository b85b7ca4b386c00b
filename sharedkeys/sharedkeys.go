// Package sharedkeys shares the SSH host keys management nodes record per VM slot
// through the vclq_hostkeys JetStream KV bucket: after one node re-imaged a slot,
// another node that serves the slot's next request accepts the new guest's key from
// that record instead of refusing it as changed (osconfig.HostKeyStore).
package sharedkeys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/ssh"

	"github.com/vclq/vclq/messages"
)

// Store is the vclq_hostkeys bucket. It is safe for concurrent use.
type Store struct {
	kv     jetstream.KeyValue
	worker string
}

// Open opens the bucket (streams.Ensure creates it). worker names this node in the
// records it writes.
func Open(ctx context.Context, js jetstream.JetStream, worker string) (*Store, error) {
	kv, err := js.KeyValue(ctx, messages.BucketHostKeys)
	if err != nil {
		return nil, fmt.Errorf("sharedkeys: bucket %s: %w", messages.BucketHostKeys, err)
	}
	return &Store{kv: kv, worker: worker}, nil
}

// record is a slot's entry: the address the key was seen at, the key in
// authorized_keys form, who recorded it and when.
type record struct {
	Address string    `json:"address"`
	Key     string    `json:"key"`
	Worker  string    `json:"worker,omitempty"`
	Time    time.Time `json:"time"`
}

// maxRecord bounds an entry read back (a key line is well under 1 KiB).
const maxRecord = 16 << 10

func key(slot string) (string, error) {
	if err := messages.ValidShortName(slot); err != nil {
		return "", fmt.Errorf("sharedkeys: slot %q: %w", slot, err)
	}
	return "slot." + slot, nil
}

// GetHostKey returns slot's record; ok is false when there is none.
func (s *Store) GetHostKey(ctx context.Context, slot string) (string, ssh.PublicKey, bool, error) {
	k, err := key(slot)
	if err != nil {
		return "", nil, false, err
	}
	e, err := s.kv.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil, false, nil
	}
	if err != nil {
		return "", nil, false, fmt.Errorf("sharedkeys: slot %s: %w", slot, err)
	}
	if len(e.Value()) > maxRecord {
		return "", nil, false, fmt.Errorf("sharedkeys: slot %s: record of %d bytes", slot, len(e.Value()))
	}
	var r record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return "", nil, false, fmt.Errorf("sharedkeys: slot %s: %w", slot, err)
	}
	pk, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(r.Key))
	if err != nil || len(strings.TrimSpace(string(rest))) > 0 {
		return "", nil, false, fmt.Errorf("sharedkeys: slot %s: bad key: %v", slot, err)
	}
	return r.Address, pk, true, nil
}

// PutHostKey records slot's key at address.
func (s *Store) PutHostKey(ctx context.Context, slot, address string, k ssh.PublicKey) error {
	kk, err := key(slot)
	if err != nil {
		return err
	}
	b, err := json.Marshal(record{Address: address, Key: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))), Worker: s.worker, Time: time.Now().UTC()})
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, kk, b); err != nil {
		return fmt.Errorf("sharedkeys: slot %s: %w", slot, err)
	}
	return nil
}
