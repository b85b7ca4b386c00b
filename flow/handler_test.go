package flow

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/nacl/box"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/osconfig"
	"github.com/vclq/vclq/worker"
)

const fullLoad = "loadimageblade,doesimageexists,startload,transfervm,vmsetupconfig,startvm,machinebooted,loadimagecomplete"

// carrying makes the fake slot hold req's image, powered on.
func carrying(hs *harness, req *messages.Request, readiness osconfig.Readiness) {
	im := imageOf(req.Image)
	hs.vms.status = hypervisor.VMStatus{Name: "x", Registered: true, Present: true, PowerState: hypervisor.PoweredOn,
		ImageID: im.ID, ImageRevisionID: im.RevisionID, ComputerID: req.Computer.ID}
	hs.guest.status = osconfig.NodeStatus{ImageName: im.Name, ImageID: im.ID, RevisionID: im.RevisionID, PostLoad: readiness == osconfig.Ready}
}

func TestLoadFlows(t *testing.T) {
	for _, tc := range []struct {
		name       string
		kind       messages.Kind
		setup      func(hs *harness, req *messages.Request)
		wantSteps  string
		wantVMs    string
		wantStates [2]string
	}{
		{"new on an empty slot", messages.KindNew, func(hs *harness, req *messages.Request) { hs.vms.images[req.Image.Name] = true },
			"statuscheck," + fullLoad + ",nodeready", "Status,ImageExists,RemoveSlotVMs,CheckSpace,TransferDisk,CreateVM,PowerOn", [2]string{"reserved", "reserved"}},
		{"new with the image missing on the host", messages.KindNew, func(*harness, *messages.Request) {},
			"statuscheck,loadimageblade,doesimageexists,copyfrompartnerMN,startload,transfervm,vmsetupconfig,startvm,machinebooted,loadimagecomplete,nodeready",
			"Status,ImageExists,CheckSpace,RetrieveImage,RemoveSlotVMs,CheckSpace,TransferDisk,CreateVM,PowerOn", [2]string{"reserved", "reserved"}},
		{"new on a READY node skips the load", messages.KindNew, func(hs *harness, req *messages.Request) { carrying(hs, req, osconfig.Ready) },
			"statuscheck,nodeready", "Status", [2]string{"reserved", "reserved"}},
		{"reinstall on a READY node reloads it", messages.KindNew, func(hs *harness, req *messages.Request) {
			carrying(hs, req, osconfig.Ready)
			hs.vms.images[req.Image.Name] = true
			req.Request.State = messages.StateReinstall
		}, "statuscheck," + fullLoad + ",nodeready", "ImageExists,RemoveSlotVMs,CheckSpace,TransferDisk,CreateVM,PowerOn", [2]string{"reserved", "reserved"}},
		{"new on a POST_LOAD node only post-loads", messages.KindNew, func(hs *harness, req *messages.Request) { carrying(hs, req, osconfig.PostLoad) },
			"statuscheck,loadimagecomplete,nodeready", "Status", [2]string{"reserved", "reserved"}},
		{"reload", messages.KindReload, func(hs *harness, req *messages.Request) { hs.vms.images[req.Image.Name] = true },
			"statuscheck," + fullLoad + ",nodeready", "Status,ImageExists,RemoveSlotVMs,CheckSpace,TransferDisk,CreateVM,PowerOn", [2]string{"complete", "available"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, nil)
			req := request(t, tc.kind)
			tc.setup(hs, req)
			res, err := hs.handle(context.Background(), req, 1)
			if err != nil {
				t.Fatalf("handle: %v\n%s", err, hs.rec.all())
			}
			if got := hs.rec.names(); got != tc.wantSteps {
				t.Errorf("loadlog\n got %s\nwant %s", got, tc.wantSteps)
			}
			if got := hs.vms.Calls(); got != tc.wantVMs {
				t.Errorf("host calls\n got %s\nwant %s", got, tc.wantVMs)
			}
			if res.RequestState != tc.wantStates[0] || res.ComputerState != tc.wantStates[1] {
				t.Errorf("states %s/%s, want %v", res.RequestState, res.ComputerState, tc.wantStates)
			}
			if res.ImageID != req.Image.ID || res.ImageRevisionID != req.Image.RevisionID {
				t.Errorf("result image %d/%d", res.ImageID, res.ImageRevisionID)
			}
			if strings.Contains(tc.wantVMs, "RemoveSlotVMs") && (len(hs.rekey) != 1 || hs.rekey[0] != req.Computer.ShortName) {
				t.Errorf("re-image not announced to the host key policy: %v", hs.rekey)
			}
			if len(hs.settled) != len(hs.rekey) {
				t.Errorf("re-image announced %d times but settled %d times", len(hs.rekey), len(hs.settled))
			}
			// Every begin has a matching end with the same step number.
			ends := map[int]bool{}
			for _, e := range hs.rec.events {
				if e.Phase == messages.PhaseEnd {
					ends[e.Step] = true
				}
			}
			for _, e := range hs.rec.events {
				if e.Phase == messages.PhaseBegin && !ends[e.Step] {
					t.Errorf("step %d %s began but never ended", e.Step, e.Name)
				}
			}
		})
	}
}

func TestFailureRollsBackAndRecordsFailureOnTheLastDelivery(t *testing.T) {
	for _, tc := range []struct {
		name        string
		delivery    int
		wantNotes   bool
		wantPermErr bool
		fail        func(hs *harness)
	}{
		{"transient boot failure, deliveries left", 1, false, false, func(hs *harness) {
			hs.guest.failOn["WaitForResponse"] = osconfig.ErrNotResponding
		}},
		{"boot failure on the last delivery", 3, true, false, func(hs *harness) {
			hs.guest.failOn["WaitForResponse"] = osconfig.ErrNotResponding
		}},
		{"permanent host fault", 1, true, true, func(hs *harness) {
			hs.vms.failOn["CreateVM"] = &hypervisor.OpError{Host: "esx", Op: "CreateVM", Kind: hypervisor.ErrInsufficientResources, Err: errBoom}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, nil)
			req := request(t, messages.KindNew)
			hs.vms.images[req.Image.Name] = true
			tc.fail(hs)
			res, err := hs.handle(context.Background(), req, tc.delivery)
			if err == nil {
				t.Fatal("flow succeeded")
			}
			if worker.IsPermanent(err) != tc.wantPermErr {
				t.Errorf("permanent = %t, want %t (%v)", worker.IsPermanent(err), tc.wantPermErr, err)
			}
			if !strings.Contains(err.Error(), "reservation 7001") || !strings.Contains(err.Error(), "vm-031") {
				t.Errorf("error does not name reservation and slot: %v", err)
			}
			if res.RequestState != "failed" || res.ComputerState != "failed" {
				t.Errorf("states %s/%s", res.RequestState, res.ComputerState)
			}
			// The half-loaded VM is removed: the last host call is the rollback.
			calls := hs.vms.Calls()
			if !strings.HasSuffix(calls, ",RemoveSlotVMs") || strings.Count(calls, "RemoveSlotVMs") != 2 {
				t.Errorf("no rollback: %s", calls)
			}
			if hs.vms.status.Registered {
				t.Error("a VM is still registered after the rollback")
			}
			if len(hs.settled) != 1 {
				t.Errorf("the re-image allowance was not withdrawn by the rollback: %v", hs.settled)
			}
			names := hs.rec.names()
			if got := strings.HasSuffix(names, "failed!"); got != tc.wantNotes {
				t.Errorf("failed row written = %t, want %t: %s", got, tc.wantNotes, names)
			}
			if tc.wantNotes && !strings.Contains(names, "loadimagefailed!") {
				t.Errorf("no loadimagefailed row: %s", names)
			}
		})
	}
}

func TestCancelRollsBackButShutdownDoesNot(t *testing.T) {
	for _, tc := range []struct {
		cause        error
		wantRollback bool
	}{
		{worker.ErrCancelled, true},
		{worker.ErrShutdown, false},
		{worker.ErrLeaseLost, false},
	} {
		t.Run(tc.cause.Error(), func(t *testing.T) {
			hs := newHarness(t, nil)
			req := request(t, messages.KindNew)
			hs.vms.images[req.Image.Name] = true
			hs.vms.blockOn = "TransferDisk"
			ctx, cancel := context.WithCancelCause(context.Background())
			go func() { time.Sleep(50 * time.Millisecond); cancel(tc.cause) }()
			_, err := hs.handle(ctx, req, 1)
			if !errors.Is(err, tc.cause) {
				t.Fatalf("err = %v, want %v", err, tc.cause)
			}
			rolledBack := strings.Count(hs.vms.Calls(), "RemoveSlotVMs") == 2
			if rolledBack != tc.wantRollback {
				t.Errorf("rolled back = %t, want %t: %s", rolledBack, tc.wantRollback, hs.vms.Calls())
			}
			if strings.Contains(hs.rec.names(), "failed!") {
				t.Errorf("a cancelled or handed-back job wrote a failed row: %s", hs.rec.names())
			}
		})
	}
}

func TestReservedSealsPasswordsForTheBridge(t *testing.T) {
	pub, priv, err := box.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := ParseSealer(base64.StdEncoding.EncodeToString(pub[:]))
	if err != nil {
		t.Fatal(err)
	}
	hs := newHarness(t, sealer)
	req := request(t, messages.KindReserved)
	res, err := hs.handle(context.Background(), req, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := hs.rec.names(); got != "reserved,addinguser,postreserve" {
		t.Errorf("loadlog %s", got)
	}
	if got := hs.guest.Calls(); got != "WaitForResponse,AddUsers,GrantAccess" {
		t.Errorf("guest calls %s", got)
	}
	if res.RequestState != "inuse" || res.ComputerState != "inuse" {
		t.Errorf("states %s/%s", res.RequestState, res.ComputerState)
	}
	if len(res.Passwords) != len(req.Users) {
		t.Fatalf("%d sealed passwords for %d users", len(res.Passwords), len(req.Users))
	}
	for _, p := range res.Passwords {
		if strings.Contains(p.Sealed, "pw-of-") || strings.Contains(hs.rec.all(), "pw-of-") {
			t.Fatal("password in clear")
		}
		raw, _ := base64.StdEncoding.DecodeString(p.Sealed)
		clear, ok := box.OpenAnonymous(nil, raw, pub, priv)
		if !ok || string(clear) != "pw-of-"+p.Login+"-Zq9!" {
			t.Fatalf("sealed password for %s does not open to the user's password", p.Login)
		}
	}
}

func TestReclaim(t *testing.T) {
	for _, tc := range []struct {
		name      string
		setup     func(hs *harness, req *messages.Request)
		wantSteps string
	}{
		{"untouched machine is sanitised", func(hs *harness, req *messages.Request) { carrying(hs, req, osconfig.Ready) },
			"deleted,info,nodeready"},
		{"a logged-in user forces a reload", func(hs *harness, req *messages.Request) {
			carrying(hs, req, osconfig.Ready)
			hs.guest.loggedIn = []string{"alice"}
			hs.vms.images[req.Image.Name] = true
		}, "deleted," + fullLoad + ",nodeready"},
		{"a tainted image forces a reload", func(hs *harness, req *messages.Request) {
			carrying(hs, req, osconfig.Ready)
			hs.guest.status.Tainted = true
			hs.vms.images[req.Image.Name] = true
		}, "deleted," + fullLoad + ",nodeready"},
		{"a user logging in between check and sanitize forces a reload", func(hs *harness, req *messages.Request) {
			carrying(hs, req, osconfig.Ready)
			hs.guest.failOn["Sanitize"] = osconfig.ErrUserLoggedIn
			hs.vms.images[req.Image.Name] = true
		}, "deleted,info,info(fail)," + fullLoad + ",nodeready"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, nil)
			req := request(t, messages.KindReclaim)
			req.Request.State = messages.StateDeleted
			tc.setup(hs, req)
			res, err := hs.handle(context.Background(), req, 1)
			if err != nil {
				t.Fatal(err)
			}
			if got := hs.rec.names(); got != tc.wantSteps {
				t.Errorf("loadlog\n got %s\nwant %s", got, tc.wantSteps)
			}
			if res.RequestState != "complete" || res.ComputerState != "available" {
				t.Errorf("states %s/%s", res.RequestState, res.ComputerState)
			}
		})
	}
}

func TestImageCapture(t *testing.T) {
	hs := newHarness(t, nil)
	req := request(t, messages.KindImage)
	hs.vms.captureMB = 1234
	res, err := hs.handle(context.Background(), req, 1)
	if err != nil {
		t.Fatal(err)
	}
	if res.ImageSizeMB != 1234 || res.NewImage == nil || res.NewImage.Name != req.TargetImage.Name {
		t.Errorf("result %+v", res)
	}
	if res.RequestState != "complete" || res.ComputerState != "reload" {
		t.Errorf("states %s/%s", res.RequestState, res.ComputerState)
	}
	if got := hs.guest.Calls(); got != "PreCapture" {
		t.Errorf("guest calls %s", got)
	}
	// A redelivered capture whose target exists was done by the earlier attempt.
	hs = newHarness(t, nil)
	hs.vms.captureMB = 99
	hs.vms.images[req.TargetImage.Name] = true
	res, err = hs.handle(context.Background(), req, 2)
	if err != nil || res.ImageSizeMB != 99 || strings.Contains(hs.vms.Calls(), "Capture") {
		t.Fatalf("redelivered capture: %+v %v %s", res, err, hs.vms.Calls())
	}
	// A failed capture ends in maintenance, never failed.
	hs = newHarness(t, nil)
	hs.vms.failOn["Capture"] = &hypervisor.OpError{Op: "Capture", Kind: hypervisor.ErrImageExists, Err: errBoom}
	res, err = hs.handle(context.Background(), req, 1)
	if err == nil || !worker.IsPermanent(err) {
		t.Fatalf("err = %v", err)
	}
	if res.RequestState != "maintenance" || res.ComputerState != "maintenance" {
		t.Errorf("failed capture states %s/%s", res.RequestState, res.ComputerState)
	}
}

// Events are published behind the steps (a slow event store never slows a load), so
// each carries the moment its step began or ended, not the moment it was stored: the
// loadlog rows and the pipeline overhead measured from them depend on it.
func TestEventsCarryTheirStepsMoments(t *testing.T) {
	hs := newHarness(t, nil)
	hs.rec.delay = 20 * time.Millisecond
	req := request(t, messages.KindNew)
	hs.vms.images[req.Image.Name] = true
	if _, err := hs.handle(t.Context(), req, 1); err != nil {
		t.Fatal(err)
	}
	n := len(hs.rec.events)
	if n < 10 {
		t.Fatalf("%d events", n)
	}
	for i, e := range hs.rec.events {
		if e.Time.IsZero() || e.Time.After(hs.rec.received[i]) {
			t.Fatalf("event %d (%s %s) at %s, received %s", i, e.Name, e.Phase, e.Time, hs.rec.received[i])
		}
		if i > 0 && e.Time.Before(hs.rec.events[i-1].Time) {
			t.Fatalf("event %d (%s %s) is older than the one before", i, e.Name, e.Phase)
		}
	}
	// The steps are instant fakes; the store needs 20 ms an event: the last event
	// happened long before it was stored.
	last := n - 1
	if lag := hs.rec.received[last].Sub(hs.rec.events[last].Time); lag < time.Duration(n/2)*hs.rec.delay {
		t.Fatalf("last event stored %s after it happened; want the publish backlog (%d events × %s) in between: its time is the publish time", lag, n, hs.rec.delay)
	}
}

// batchRecorder takes events in batches, as the worker's sink does.
type batchRecorder struct {
	recorder
	batches []int
}

func (b *batchRecorder) LoadlogBatch(ctx context.Context, evs []worker.StepEvent) error {
	b.mu.Lock()
	b.batches = append(b.batches, len(evs))
	b.mu.Unlock()
	for _, e := range evs {
		if err := b.recorder.Loadlog(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

// With a sink that takes batches, events that queued up behind a slow store go
// together, in order, and none is lost or repeated.
func TestEventsGoInOrderedBatches(t *testing.T) {
	one := newHarness(t, nil)
	req := request(t, messages.KindNew)
	one.vms.images[req.Image.Name] = true
	if _, err := one.handle(t.Context(), req, 1); err != nil {
		t.Fatal(err)
	}
	hs := newHarness(t, nil)
	hs.vms.images[req.Image.Name] = true
	b := &batchRecorder{recorder: recorder{delay: 10 * time.Millisecond}}
	if _, err := hs.h.Handle(t.Context(), &worker.Job{Request: req, Seq: 9, Delivery: 1, MaxDeliver: 3, Fence: 1, Events: b, Worker: "w1"}); err != nil {
		t.Fatal(err)
	}
	seq := func(evs []messages.Loadlog) string {
		var out []string
		for _, e := range evs {
			out = append(out, fmt.Sprintf("%d %s %s %s", e.Step, e.Name, e.Phase, e.Info))
		}
		return strings.Join(out, "\n")
	}
	if got, want := seq(b.events), seq(one.rec.events); got != want {
		t.Fatalf("batched events:\n%s\nwant (as sent one by one):\n%s", got, want)
	}
	for i := 1; i < len(b.events); i++ {
		if b.events[i].Step < b.events[i-1].Step {
			t.Fatalf("event %d (step %d) after step %d", i, b.events[i].Step, b.events[i-1].Step)
		}
	}
	if slices.Max(b.batches) < 2 {
		t.Fatalf("batches %v: events queued behind a slow store were not batched", b.batches)
	}
}
