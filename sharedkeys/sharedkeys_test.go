package sharedkeys_test

import (
	"context"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/osconfig"
	"github.com/vclq/vclq/sharedkeys"
	"github.com/vclq/vclq/streams"
)

var _ osconfig.HostKeyStore = (*sharedkeys.Store)(nil)

// Two nodes' stores over one JetStream see each other's records; the latest wins;
// a slot name that is not a host name is refused before any request.
func TestRecordsAreSharedThroughTheBucket(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	ctx := context.Background()
	a, err := sharedkeys.Open(ctx, j.JS, "mn1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := sharedkeys.Open(ctx, j.JS, "mn2")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok, err := b.GetHostKey(ctx, "vm001"); ok || err != nil {
		t.Fatalf("empty bucket: ok %t, err %v", ok, err)
	}
	k1, k2 := testutil.SSHKey(t), testutil.SSHKey(t)
	for _, k := range []ssh.PublicKey{k1, k2} {
		if err := a.PutHostKey(ctx, "vm001", "198.51.100.10", k); err != nil {
			t.Fatal(err)
		}
	}
	addr, got, ok, err := b.GetHostKey(ctx, "vm001")
	if err != nil || !ok || addr != "198.51.100.10" || string(got.Marshal()) != string(k2.Marshal()) {
		t.Fatalf("B reads %q %v ok=%t err=%v, want A's latest key", addr, got, ok, err)
	}
	for _, slot := range []string{"", "vm001.example.org", "a b", "vm>", "../x"} {
		if err := a.PutHostKey(ctx, slot, "198.51.100.10", k1); err == nil {
			t.Errorf("slot %q accepted", slot)
		}
	}
}
