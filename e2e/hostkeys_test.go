package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/messages"
)

// Two management nodes, each with its own known_hosts file as on separate machines,
// serve one slot in turns: node A loads it, node B serves its reservation, A re-images
// it with another image, and B serves the next reservation. B has the guest's old key
// on record; it accepts the new one because A recorded it in vclq_hostkeys, where
// without that record it would refuse the changed key and fail the reservation.
func TestNodesShareHostKeys(t *testing.T) {
	s := startSite(t, 1, 1)
	slot := s.lab.Slots[0]
	client, err := s.lab.Guests.NewClient(t.Context(), "user-pc")
	if err != nil {
		t.Fatal(err)
	}
	_, pub := userKey(t, t.TempDir())
	knownHosts := map[string]string{"mn-a": filepath.Join(t.TempDir(), "known_hosts"), "mn-b": filepath.Join(t.TempDir(), "known_hosts")}
	run := func(node string, r *messages.Request) {
		t.Helper()
		cmd := s.startWorkerProcessWith(t, node, knownHosts[node])
		seq := s.submit(t, r)
		res := s.result(t, r.Reservation.ID, seq, flowWait)
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if res.Outcome != messages.OutcomeSuccess || res.Worker != node {
			t.Fatalf("%s on %s: %+v\n%s", r.Kind, node, res, s.dump(r.Reservation.ID))
		}
	}
	for i, img := range []devlab.ImageSpec{s.lab.Images[0], s.lab.Images[1]} {
		res := int64(700 + i)
		run("mn-a", s.lab.Request(devlab.RequestSpec{Kind: messages.KindNew, Slot: slot, Image: img, Reservation: res, Request: res}))
		run("mn-b", s.lab.Request(devlab.RequestSpec{Kind: messages.KindReserved, Slot: slot, Image: img, Reservation: res, Request: res,
			Users: []messages.User{{ID: 900, Login: "alice", UID: 20001, SSHKeys: []string{pub}}}, RemoteIP: client.IP().String()}))
	}
	// Both nodes now hold the re-imaged guest's key.
	key, err := slot.Guest.HostKey()
	if err != nil {
		t.Fatal(err)
	}
	for node, file := range knownHosts {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !containsKey(b, key) {
			t.Errorf("%s's known_hosts lacks the guest's current key:\n%s", node, b)
		}
	}
}

// containsKey reports whether a known_hosts file holds key.
func containsKey(file []byte, key ssh.PublicKey) bool {
	for len(file) > 0 {
		_, _, k, _, rest, err := ssh.ParseKnownHosts(file)
		if err != nil {
			return false
		}
		if bytes.Equal(k.Marshal(), key.Marshal()) {
			return true
		}
		file = rest
	}
	return false
}
