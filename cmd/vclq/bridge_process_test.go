package main

import (
	"context"
	"database/sql"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// TestBridgeProcessSIGKILL runs `vclq bridge` as a process against a fresh VCL
// database (vclq's schema), an embedded NATS and an in-process worker pool, kills it
// with SIGKILL in the middle of the run, restarts it, and checks that every request
// ends in VCL's state with exactly one begin and one exited loadlog row.
func TestBridgeProcessSIGKILL(t *testing.T) {
	if err := bt.Reachable(context.Background()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("MariaDB at %s unreachable under CI: %v", bt.Addr(), err)
		}
		t.Skipf("MariaDB at %s unreachable: %v", bt.Addr(), err)
	}
	bin := vclqBinary(t)
	ctx := context.Background()
	d, err := bt.Create(ctx, bt.SchemaOwn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Drop)
	if err := bt.LoadSite(ctx, d.SQL, 0); err != nil {
		t.Fatal(err)
	}
	type row struct {
		r                    bt.Req
		want                 string
		request, reservation int64
	}
	rows := []*row{
		{r: bt.Req{State: "new", Computer: 110, Accounts: []int64{bt.UserBob}}, want: "reserved/new"},
		{r: bt.Req{State: "new", Computer: 111, Rev: bt.RevWin, User: bt.UserCarol}, want: "reserved/new"},
		{r: bt.Req{State: "new", Computer: 112}, want: "reserved/new"},
		{r: bt.Req{State: "reserved", Last: "new", Computer: 113, User: bt.UserDave, RemoteIP: "203.0.113.5"}, want: "inuse/reserved"},
		{r: bt.Req{State: "deleted", Last: "reserved", Computer: 114}, want: "complete/deleted"},
		{r: bt.Req{State: "timeout", Last: "inuse", Computer: 115, Start: -time.Hour}, want: "complete/timeout"},
	}
	for _, r := range rows {
		if r.request, r.reservation, err = bt.AddRequest(ctx, d.SQL, r.r); err != nil {
			t.Fatal(err)
		}
	}

	// The seal key, made by the CLI.
	keyFile := filepath.Join(t.TempDir(), "seal.key")
	out, err := exec.Command(bin, "bridge", "--seal-keygen", keyFile).Output()
	if err != nil {
		t.Fatalf("--seal-keygen: %v", err)
	}
	pubRaw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(out)))
	if err != nil || len(pubRaw) != 32 {
		t.Fatalf("--seal-keygen printed %q", out)
	}
	var pub [32]byte
	copy(pub[:], pubRaw)

	j := testutil.StartVCLJetStream(t, streams.Options{AckWait: 5 * time.Second})
	p, err := worker.New(j.JS, j.NC, &bt.StateExit{SealTo: &pub, Step: 40 * time.Millisecond},
		worker.Config{ID: "cli-test-worker", Concurrency: 3, PollWait: 300 * time.Millisecond, LeaseTTL: 5 * time.Second}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	wdone := make(chan error, 1)
	go func() { wdone <- p.Run(wctx) }()
	t.Cleanup(func() { cancel(); <-wdone })

	start := func(n int) (*exec.Cmd, chan error) {
		logPath := filepath.Join(t.TempDir(), fmt.Sprintf("bridge%d.log", n))
		f, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "bridge", "--nats", j.URL, "--management-node", "100", "--interval", "200ms",
			"--seal-key", keyFile, "--event-ack-wait", "2s")
		cmd.Env = append(os.Environ(), "VCLQ_BRIDGE_MYSQL="+d.DSN, "VCLQ_LOG_FORMAT=json")
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait(); f.Close() }()
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
			}
			if t.Failed() {
				b, _ := os.ReadFile(logPath)
				t.Logf("--- bridge %d log ---\n%s", n, b)
			}
		})
		return cmd, done
	}
	count := func(q string) int {
		var n int
		if err := d.SQL.QueryRow(q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	cmd, done := start(1)
	// Kill it once some, but not all, results are in.
	testutil.WaitFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		if n := count(`SELECT COUNT(*) FROM computerloadlog l JOIN computerloadstate s ON s.id = l.loadstateid WHERE s.loadstatename = 'exited'`); n < 1 {
			return fmt.Errorf("%d exited rows", n)
		}
		return nil
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	exitedAtKill := count(`SELECT COUNT(*) FROM computerloadlog l JOIN computerloadstate s ON s.id = l.loadstateid WHERE s.loadstatename = 'exited'`)
	start(2)
	state := func(id int64) string {
		var st, last string
		if err := d.SQL.QueryRow(`SELECT s.name, l.name FROM request r JOIN state s ON s.id = r.stateid JOIN state l ON l.id = r.laststateid WHERE r.id = ?`, id).Scan(&st, &last); err != nil {
			t.Fatal(err)
		}
		return st + "/" + last
	}
	testutil.WaitFor(t, 90*time.Second, 100*time.Millisecond, func() error {
		for _, r := range rows {
			if got := state(r.request); got != r.want {
				return fmt.Errorf("request %d: %s, want %s", r.request, got, r.want)
			}
		}
		if n := count("SELECT COUNT(*) FROM request WHERE laststateid = 19 AND stateid <> 12"); n != 0 {
			return fmt.Errorf("%d reload requests unfinished", n)
		}
		return nil
	})
	t.Logf("%d of %d results were in at the SIGKILL", exitedAtKill, len(rows))
	if n := count(`SELECT COUNT(*) FROM (SELECT l.reservationid, s.loadstatename, COUNT(*) c FROM computerloadlog l
		JOIN computerloadstate s ON s.id = l.loadstateid WHERE s.loadstatename IN ('begin', 'exited')
		GROUP BY l.reservationid, s.loadstatename HAVING c > 1) d`); n != 0 {
		t.Errorf("%d duplicated begin/exited rows", n)
	}
	var pw sql.NullString
	if err := d.SQL.QueryRow("SELECT pw FROM reservation WHERE id = ?", rows[0].reservation).Scan(&pw); err != nil || len(pw.String) != 16 {
		t.Errorf("reservation.pw not stored (%v)", err)
	}
	if n := count("SELECT COUNT(*) FROM request r JOIN reservation rs ON rs.requestid = r.id WHERE rs.computerid = 115 AND r.laststateid = 19 AND r.stateid = 12"); n != 1 {
		t.Errorf("%d completed reloads of computer 115, want 1", n)
	}
}
