package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/messages"
)

const (
	loadSteps = "statuscheck,loadimageblade,doesimageexists,startload,transfervm,vmsetupconfig,startvm,machinebooted,loadimagecomplete"
	flowWait  = 3 * time.Minute
)

// new → reserved → reclaim on one slot, then an image capture and a load of the
// captured image on another: every flow's loadlog sequence, the VM as govmomi sees it
// and the guest as it is inside.
func TestReservationLifecycleEndToEnd(t *testing.T) {
	s := startSite(t, 1, 2)
	s.startWorker(t, "w1", 2)
	slot, img := s.lab.Slots[0], s.lab.Images[0]

	// new: the empty slot is loaded and the node is ready.
	newReq := s.lab.Request(devlab.RequestSpec{Kind: messages.KindNew, Slot: slot, Image: img, Reservation: 501, Request: 601})
	seq := s.submit(t, newReq)
	res := s.result(t, 501, seq, flowWait)
	if res.Outcome != messages.OutcomeSuccess || res.RequestState != "reserved" || res.ComputerState != "reserved" {
		t.Fatalf("new: %+v\n%s", res, s.dump(501))
	}
	if got, want := s.steps(t, 501, seq), loadSteps+",nodeready"; got != want {
		t.Errorf("new loadlog\n got %s\nwant %s", got, want)
	}
	vms := slotVMs(t, slot)
	name := hypervisor.VMName(hypervisor.SlotFromMessage(slot.Computer), hypervisor.ImageFromMessage(newReq.Image))
	if len(vms) != 1 || vms[0].Name != name || vms[0].Power != "poweredOn" {
		t.Fatalf("slot VMs after new: %+v, want one powered-on %s", vms, name)
	}
	if vms[0].Extra[hypervisor.KeyImageID] != "12" || vms[0].Extra[hypervisor.KeyComputerID] != "101" {
		t.Errorf("VM metadata %v", vms[0].Extra)
	}
	cur, err := inGuest(t, slot, "cat", "/root/currentimage.txt")
	if err != nil || !strings.HasPrefix(cur, img.Name+"\n") || !strings.Contains(cur, "vcld_post_load=success") {
		t.Fatalf("guest currentimage.txt (%v):\n%s", err, cur)
	}

	// reserved: alice gets an account, SSH opens to her address only.
	client, err := s.lab.Guests.NewClient(context.Background(), "alice-pc")
	if err != nil {
		t.Fatal(err)
	}
	keyFile, pub := userKey(t, t.TempDir())
	resReq := s.lab.Request(devlab.RequestSpec{Kind: messages.KindReserved, Slot: slot, Image: img, Reservation: 501, Request: 601,
		Users: []messages.User{{ID: 900, Login: "alice", UID: 20001, SSHKeys: []string{pub}}}, RemoteIP: client.IP().String()})
	seq = s.submit(t, resReq)
	res = s.result(t, 501, seq, flowWait)
	if res.Outcome != messages.OutcomeSuccess || res.RequestState != "inuse" {
		t.Fatalf("reserved: %+v\n%s", res, s.dump(501))
	}
	if got, want := s.steps(t, 501, seq), "reserved,addinguser,postreserve"; got != want {
		t.Errorf("reserved loadlog\n got %s\nwant %s", got, want)
	}
	if out, err := inGuest(t, slot, "id", "-u", "alice"); err != nil || strings.TrimSpace(out) != "20001" {
		t.Fatalf("alice in the guest: %q %v", out, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := client.Exec(ctx, "ssh", "-i", keyFile, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "ConnectTimeout=5", "alice@"+slot.Computer.PrivateIP, "id -un")
	if err != nil || strings.TrimSpace(string(out)) != "alice" {
		t.Fatalf("alice cannot log in from her address: %q %v", out, err)
	}

	// reclaim: nobody is logged in and the image is untainted: sanitise, no reload.
	recReq := s.lab.Request(devlab.RequestSpec{Kind: messages.KindReclaim, Slot: slot, Image: img, Reservation: 501, Request: 601,
		Users: resReq.Users})
	seq = s.submit(t, recReq)
	res = s.result(t, 501, seq, flowWait)
	if res.Outcome != messages.OutcomeSuccess || res.RequestState != "complete" || res.ComputerState != "available" {
		t.Fatalf("reclaim: %+v\n%s", res, s.dump(501))
	}
	if got, want := s.steps(t, 501, seq), "deleted,info,nodeready"; got != want {
		t.Errorf("reclaim loadlog\n got %s\nwant %s", got, want)
	}
	if out, err := inGuest(t, slot, "id", "-u", "alice"); err == nil {
		t.Errorf("alice still exists after reclaim: %s", out)
	}
	if vms := slotVMs(t, slot); len(vms) != 1 || vms[0].Name != name {
		t.Errorf("sanitising reloaded the VM: %+v", vms)
	}

	// reload: the slot is loaded again with the other image and made available.
	other := s.lab.Images[1]
	seq = s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindReload, Slot: slot, Image: other, Reservation: 504, Request: 604}))
	res = s.result(t, 504, seq, flowWait)
	if res.Outcome != messages.OutcomeSuccess || res.RequestState != "complete" || res.ComputerState != "available" || res.ImageID != other.ID {
		t.Fatalf("reload: %+v\n%s", res, s.dump(504))
	}
	if got, want := s.steps(t, 504, seq), loadSteps+",nodeready"; got != want {
		t.Errorf("reload loadlog\n got %s\nwant %s", got, want)
	}
	otherName := hypervisor.VMName(hypervisor.SlotFromMessage(slot.Computer), hypervisor.ImageFromMessage(s.lab.Request(devlab.RequestSpec{Kind: messages.KindReload, Slot: slot, Image: other}).Image))
	if vms := slotVMs(t, slot); len(vms) != 1 || vms[0].Name != otherName || vms[0].Power != "poweredOn" {
		t.Errorf("slot VMs after reload: %+v, want one powered-on %s", vms, otherName)
	}
	if cur, err := inGuest(t, slot, "cat", "/root/currentimage.txt"); err != nil || !strings.HasPrefix(cur, other.Name+"\n") {
		t.Errorf("guest after reload (%v):\n%s", err, cur)
	}

	// image: capture slot 1's VM as a new image, then load that image again.
	slot1 := s.lab.Slots[1]
	seq = s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindNew, Slot: slot1, Image: img, Reservation: 502, Request: 602}))
	if res := s.result(t, 502, seq, flowWait); res.Outcome != messages.OutcomeSuccess {
		t.Fatalf("new on slot 1: %+v", res)
	}
	target := &messages.TargetImage{ImageID: 77, Name: "vmwarelinux-captured-v1", RevisionID: 770, Revision: 1}
	seq = s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindImage, Slot: slot1, Image: img, Reservation: 502, Request: 602, Target: target}))
	res = s.result(t, 502, seq, flowWait)
	if res.Outcome != messages.OutcomeSuccess || res.RequestState != "complete" || res.ComputerState != "reload" ||
		res.ImageSizeMB < 4 || res.NewImage == nil || res.NewImage.Name != target.Name {
		t.Fatalf("image: %+v\n%s", res, s.dump(502))
	}
	base := filepath.Join(slot1.Host.DatastoreDir(devlab.Datastore), target.Name, target.Name+".vmdk")
	if _, err := os.Stat(base); err != nil {
		t.Fatalf("captured base image: %v", err)
	}
	if vms := slotVMs(t, slot1); len(vms) != 0 {
		t.Errorf("captured VM not removed: %+v", vms)
	}
	captured := devlab.ImageSpec{ID: target.ImageID, Name: target.Name, RevisionID: target.RevisionID, Revision: target.Revision}
	seq = s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindNew, Slot: slot1, Image: captured, Reservation: 503, Request: 603}))
	if res := s.result(t, 503, seq, flowWait); res.Outcome != messages.OutcomeSuccess {
		t.Fatalf("load of the captured image: %+v\n%s", res, s.dump(503))
	}
	if vms := slotVMs(t, slot1); len(vms) != 1 || vms[0].Power != "poweredOn" || vms[0].Extra[hypervisor.KeyImageID] != "77" {
		t.Errorf("slot 1 after loading the captured image: %+v", vms)
	}
}

// A reclaim that arrives while the new is still loading cancels the load first; the
// reclaim then leaves the slot loaded and available, with one VM.
func TestReclaimCancelsARunningLoad(t *testing.T) {
	s := startSite(t, 1, 1)
	s.startWorker(t, "w1", 2)
	slot, img := s.lab.Slots[0], s.lab.Images[0]
	// Slow every host call a little so the load is still running when the reclaim comes.
	slow := slot.Host.AddFault(esxsim.FaultRule{Delay: 150 * time.Millisecond})
	newSeq := s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindNew, Slot: slot, Image: img, Reservation: 601, Request: 701}))
	waitStep(t, s, 601, newSeq, messages.LoadStartLoad)
	recSeq := s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: messages.KindReclaim, Slot: slot, Image: img, Reservation: 601, Request: 701}))

	res := s.result(t, 601, newSeq, flowWait)
	if res.Outcome != messages.OutcomeFailed || res.ErrorCode != "cancelled" {
		t.Fatalf("cancelled new: %+v\n%s", res, s.dump(601))
	}
	slow()
	res = s.result(t, 601, recSeq, flowWait)
	if res.Outcome != messages.OutcomeSuccess || res.ComputerState != "available" {
		t.Fatalf("reclaim after cancel: %+v\n%s", res, s.dump(601))
	}
	if vms := slotVMs(t, slot); len(vms) != 1 || vms[0].Power != "poweredOn" {
		t.Fatalf("slot after cancel + reclaim: %+v", vms)
	}
}

// A hostile request is rejected before any side effect: no VM appears anywhere.
func TestHostileRequestTouchesNothing(t *testing.T) {
	s := startSite(t, 1, 1)
	s.startWorker(t, "w1", 1)
	slot, img := s.lab.Slots[0], s.lab.Images[0]
	r := s.lab.Request(devlab.RequestSpec{Kind: messages.KindNew, Slot: slot, Image: img, Reservation: 701, Request: 801})
	b := mustJSON(t, r)
	hostile := strings.Replace(string(b), `"hostname":"`+slot.Computer.Hostname+`"`, `"hostname":"a;rm -rf /"`, 1)
	seq := s.publish(t, messages.KindNew.Subject(), []byte(hostile), "hostile-1")
	res := s.result(t, 701, seq, time.Minute)
	if res.Outcome != messages.OutcomeRejected || !strings.Contains(res.Error, "computer.hostname") {
		t.Fatalf("hostile request: %+v", res)
	}
	if vms := hostVMs(t, slot.Host); len(vms) != 0 {
		t.Fatalf("a rejected request created VMs: %+v", vms)
	}
	if got := s.steps(t, 701, seq); got != "" {
		t.Fatalf("a rejected request ran steps: %s", got)
	}
}

func waitStep(t *testing.T, s *site, reservation int64, seq uint64, name string) {
	t.Helper()
	deadline := time.Now().Add(flowWait)
	for time.Now().Before(deadline) {
		if strings.Contains(s.steps(t, reservation, seq), name) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("step %s of reservation %d never began", name, reservation)
}
