package bridge

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

// drain runs b until its consumer is idle.
func drain(t *testing.T, b *Bridge, j *testutil.JetStream) {
	t.Helper()
	stop, _ := run(t, b)
	consumerIdle(t, j, 20*time.Second)
	stop()
}

// TestVCLLifecycleSemantics (issue 11 items 3 and 6; VCL_LIFECYCLE.md §5, §7): a
// capture makes the web's deleted=1 image and revision visible as image.pm does; a
// failure writes one failed row; a load the user deletes gets its exited row before
// the reclaim's begin, and none of its late rows after it.
func TestVCLLifecycleSemantics(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, streams.Options{})
		// The web's capture form: image and revision created deleted=1.
		s.exec("UPDATE image SET deleted = 1, name = 'centos7custom-pending', size = 0, lastupdate = NULL WHERE id = ?", imgCustom)
		s.exec("UPDATE imagerevision SET deleted = 1, datecreated = '2020-01-01 00:00:00' WHERE id = ?", revCustom)
		_, capRes := s.add(req{state: "image", last: "inuse", computer: 111, rev: revCustom, start: -time.Hour})
		_, failRes := s.add(req{state: "new", computer: 112, user: userCarol})
		delReq, delRes := s.add(req{state: "new", computer: 113, user: userDave})
		b := newBridge(t, s, j, Config{ManagementNodes: []int64{mnOurs}, Interval: time.Hour})
		ctx := context.Background()
		if _, err := b.PollOnce(ctx); err != nil {
			t.Fatal(err)
		}
		msgs := byReservation(queued(t, j))
		capM, failM, delM := msgs[capRes], msgs[failRes], msgs[delRes]

		// Capture.
		res := resultEvent(capM, 1, messages.OutcomeSuccess, messages.StateComplete, messages.StateReload)
		res.ImageSizeMB = 5120
		res.NewImage = &messages.TargetImage{ImageID: imgCustom, Name: "vmwarelinux-centos7custom-v0", RevisionID: revCustom, Revision: 0}
		sendResult(t, j, res)
		// A failure: the worker's failed note and its failed result.
		sendLoadlog(t, j, loadlogEvent(failM, 2, 1, messages.LoadStatusCheck, messages.PhaseBegin, ""))
		sendLoadlog(t, j, loadlogEvent(failM, 2, 2, messages.LoadFailed, messages.PhaseInfo, "the VM did not boot within 600s"))
		sendResult(t, j, resultEvent(failM, 2, messages.OutcomeFailed, messages.StateFailed, messages.StateFailed))
		// A load under way ...
		sendLoadlog(t, j, loadlogEvent(delM, 3, 1, messages.LoadStatusCheck, messages.PhaseBegin, ""))
		drain(t, b, j)
		// ... that its user deletes (the web's SQL), then the reclaim is claimed ...
		s.exec("UPDATE request SET laststateid = stateid, stateid = ? WHERE id = ?", messages.StateIDs[messages.StateDeleted], delReq)
		if _, err := b.PollOnce(ctx); err != nil {
			t.Fatal(err)
		}
		// ... and the cancelled load's late rows and result arrive after its begin.
		sendLoadlog(t, j, loadlogEvent(delM, 3, 2, messages.LoadInfo, messages.PhaseInfo, "cancelled: the request was deleted"))
		sendResult(t, j, resultEvent(delM, 3, messages.OutcomeFailed, messages.StateFailed, messages.StateFailed))
		var reclaim *messages.Request
		for _, m := range queued(t, j) {
			if m.Reservation.ID == delRes && m.Kind == messages.KindReclaim {
				reclaim = m
			}
		}
		if reclaim == nil {
			t.Fatal("the deleted request was not claimed for a reclaim")
		}
		sendLoadlog(t, j, loadlogEvent(reclaim, 4, 1, messages.LoadDeleted, messages.PhaseBegin, ""))
		sendResult(t, j, resultEvent(reclaim, 4, messages.OutcomeSuccess, messages.StateComplete, messages.StateAvailable))
		drain(t, b, j)

		var deleted, revDeleted, size int
		var name string
		var lastupdate, created time.Time
		if err := s.db.QueryRow(`SELECT i.deleted, i.size, i.name, i.lastupdate, ir.deleted, ir.datecreated FROM image i JOIN imagerevision ir ON ir.imageid = i.id
			WHERE i.id = ? AND ir.id = ?`, imgCustom, revCustom).Scan(&deleted, &size, &name, &lastupdate, &revDeleted, &created); err != nil {
			t.Fatal(err)
		}
		t.Logf("captured image: deleted %d, size %d, name %s, lastupdate %s; revision deleted %d, datecreated %s", deleted, size, name, lastupdate, revDeleted, created)
		if deleted != 0 || revDeleted != 0 || size != 5120 || name != "vmwarelinux-centos7custom-v0" ||
			time.Since(lastupdate) > time.Hour || time.Since(created) > time.Hour {
			t.Errorf("the captured image is not visible as image.pm leaves it")
		}

		failLog := strings.Join(stepNames(s.loadlog(failRes)), ",")
		if n := strings.Count(failLog, "failed"); n != 1 || failLog != "begin,statuscheck,failed,exited" {
			t.Errorf("failed load: %d failed rows: %s", n, failLog)
		}
		delLog := strings.Join(stepNames(s.loadlog(delRes)), ",")
		t.Logf("failed load: %s; deleted load: %s", failLog, delLog)
		if delLog != "begin,statuscheck,exited,begin,deleted,exited" {
			t.Errorf("deleted load's rows %s, want begin,statuscheck,exited,begin,deleted,exited", delLog)
		}
		if got := s.requestState(delReq); got != "complete/deleted" {
			t.Errorf("deleted request %s", got)
		}
		_ = fmt.Sprint()
	})
}

// TestReinstallReturnsToReserved (issue 11 item 5; VCL_LIFECYCLE.md §7): the web's
// reinstall (state 27 on an inuse reservation) is new.pm's: the same image is loaded
// again, the accounts get fresh passwords, and the reservation is back in reserved,
// the computer reserved, not complete/available.
func TestReinstallReturnsToReserved(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, e2eStreams())
		key, _ := NewSealKey(nil)
		startWorkers(t, j, 1, &bt.StateExit{SealTo: key.PublicKey()})
		id, rs := s.add(req{state: "inuse", last: "reserved", computer: 110, rev: revWin, accounts: []int64{userBob}})
		s.exec("UPDATE computer SET stateid = 8 WHERE id = 110")
		s.exec("UPDATE reservation SET pw = 'old-password' WHERE id = ?", rs)
		// The web UI's reinstall.
		s.exec("UPDATE request SET stateid = 27 WHERE id = ?", id)
		b := newBridge(t, s, j, Config{SealKey: key, Interval: 100 * time.Millisecond})
		stop, _ := run(t, b)
		testutil.WaitFor(t, 30*time.Second, 50*time.Millisecond, func() error {
			if got := s.requestState(id); got != "reserved/reinstall" {
				return fmt.Errorf("request %s", got)
			}
			return nil
		})
		consumerIdle(t, j, 20*time.Second)
		stop()
		var pw string
		var cur int64
		if err := s.db.QueryRow("SELECT COALESCE(rs.pw, ''), c.currentimageid FROM reservation rs JOIN computer c ON c.id = rs.computerid WHERE rs.id = ?", rs).Scan(&pw, &cur); err != nil {
			t.Fatal(err)
		}
		rows := s.loadlog(rs)
		log := strings.Join(stepNames(rows), ",")
		t.Logf("reinstall: request %s, computer %s, image %d, loadlog %s (%s)", s.requestState(id), s.computerState(110), cur, log, rows[0])
		if rows[0] != "begin:vclq bridge: queued on "+messages.KindNew.Subject() {
			t.Errorf("first row %q, want the reinstall queued as a new request", rows[0])
		}
		if got := s.computerState(110); got != "reserved" {
			t.Errorf("computer %s, want reserved", got)
		}
		if pw == "old-password" || len(pw) != 16 || cur != imgWin {
			t.Errorf("password %q (want fresh), current image %d (want %d)", pw, cur, imgWin)
		}
		if !strings.HasSuffix(log, "addinguser,nodeready,exited") {
			t.Errorf("loadlog %s", log)
		}
	})
}
