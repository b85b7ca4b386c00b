package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/internal/natsembed"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

// publishLoadlogs publishes n begin events of reservation res on a connection of
// its own, steps from first on.
func publishLoadlogs(t *testing.T, url string, res int64, first, n int) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for step := first; step < first+n; step++ {
		b, _ := json.Marshal(messages.Loadlog{Schema: 1, ReservationID: res, RequestID: 1, ComputerID: 2, Kind: messages.KindNew,
			Name: messages.LoadStatusCheck, Phase: messages.PhaseBegin, Step: step, Time: time.Now().UTC(), Worker: "w", RequestSeq: 1})
		// The stream may still be recovering just after a restart: retry briefly.
		testutil.WaitFor(t, 15*time.Second, 100*time.Millisecond, func() error {
			_, err := js.Publish(ctx, messages.LoadlogSubject(res), b)
			return err
		})
	}
}

// followedSeqs decodes the JSON lines of `events --json` into stream sequences.
func followedSeqs(out string) []uint64 {
	var seqs []uint64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var ev eventlog.Event
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Seq > 0 {
			seqs = append(seqs, ev.Seq)
		}
	}
	return seqs
}

// `events --follow` survives a NATS server restart (same port, same store): the
// events published before and after it are printed once each, in order.
func TestEventsFollowSurvivesServerRestart(t *testing.T) {
	dir := t.TempDir()
	srv, err := natsembed.Start(natsembed.Options{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var srvMu sync.Mutex
	t.Cleanup(func() { srvMu.Lock(); srv.Stop(); srvMu.Unlock() })
	url, port := srv.URL(), srv.Addr().(*net.TCPAddr).Port
	{
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = streams.Ensure(ctx, js, streams.Options{})
		cancel()
		nc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	publishLoadlogs(t, url, 7001, 1, 3)

	var out, errb testutil.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"events", "--follow", "--json", "--nats=" + url}, strings.NewReader(""), &out, &errb)
	}()
	waitSeqs := func(n int) {
		t.Helper()
		testutil.WaitFor(t, 40*time.Second, 50*time.Millisecond, func() error {
			select {
			case code := <-done:
				t.Fatalf("events exited %d while following: %s", code, errb.String())
			default:
			}
			if got := len(followedSeqs(out.String())); got < n {
				return fmt.Errorf("%d events printed, want %d", got, n)
			}
			return nil
		})
	}
	waitSeqs(3)

	srvMu.Lock()
	srv.Stop()
	srvMu.Unlock()
	time.Sleep(300 * time.Millisecond) // events notices the shutdown
	srvMu.Lock()
	srv, err = natsembed.Start(natsembed.Options{StoreDir: dir, Port: port})
	srvMu.Unlock()
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	publishLoadlogs(t, url, 7001, 4, 3)
	waitSeqs(6)
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	cancel()
	code := <-done
	seqs := followedSeqs(out.String())
	t.Logf("exit %d, printed sequences %v; stderr:\n%s", code, seqs, errb.String())
	if code != exitOK {
		t.Errorf("exit %d after the interrupt, want 0", code)
	}
	if fmt.Sprint(seqs) != "[1 2 3 4 5 6]" {
		t.Errorf("printed %v, want [1 2 3 4 5 6]: each event once, in order", seqs)
	}
}

// events for a reservation without any says so and exits 1 (not when following).
func TestEventsUnknownReservation(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	publishLoadlogs(t, j.URL, 7001, 1, 2)
	for _, tc := range []struct {
		args    []string
		code    int
		stderr  string
		printed int
	}{
		{[]string{"--reservation", "7001"}, exitOK, "", 2},
		{[]string{"--reservation", "999"}, exitFailure, "no events for reservation 999", 0},
		{[]string{"--reservation", "999", "--type", "result"}, exitFailure, "no result events for reservation 999", 0},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errs := vclqRun(t, "", append([]string{"events", "--json", "--nats=" + j.URL}, tc.args...)...)
			n := len(followedSeqs(out))
			t.Logf("exit %d, %d events, stderr %q", code, n, errs)
			if code != tc.code || n != tc.printed || !strings.Contains(errs, tc.stderr) {
				t.Errorf("exit %d (want %d), %d events (want %d), stderr %q (want %q)", code, tc.code, n, tc.printed, errs, tc.stderr)
			}
		})
	}
}
