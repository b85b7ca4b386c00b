package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/flow"
	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/messages"
)

// vclqBin is the vclq binary built for this test run.
var vclqBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vclq-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	vclqBin = filepath.Join(dir, "vclq")
	if out, err := exec.Command("go", "build", "-o", vclqBin, "../cmd/vclq").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build vclq: %v\n%s", err, out)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startWorkerProcess runs `vclq worker` with the real flows in a child process, with
// the same JSON configuration an operator writes.
func (s *site) startWorkerProcess(t *testing.T, id string) *exec.Cmd {
	t.Helper()
	return s.startWorkerProcessWith(t, id, "")
}

// startWorkerProcessWith is startWorkerProcess with the node's own known_hosts file
// (the lab's when empty).
func (s *site) startWorkerProcessWith(t *testing.T, id, knownHosts string) *exec.Cmd {
	t.Helper()
	setup := s.lab.Setup()
	if knownHosts != "" {
		setup.KnownHostsFile = knownHosts
	}
	setup.BootTimeout, setup.BootInterval = flow.Duration(time.Minute), flow.Duration(200*time.Millisecond)
	cfg := map[string]any{
		"nats": map[string]string{"url": s.js.URL}, "id": id, "concurrency": 2,
		"lease_ttl": "5s", "ack_wait": "10s", "max_deliver": 3, "flow": setup,
	}
	b, _ := json.Marshal(cfg)
	p := filepath.Join(t.TempDir(), id+".json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(vclqBin, "worker", "--config", p)
	cmd.Env = append(os.Environ(), "VCLQ_LOG_LEVEL=warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// A worker killed with SIGKILL in the middle of each flow: another worker completes
// the request, with the same end state, and exactly one result is published.
func TestWorkerCrashMidFlow(t *testing.T) {
	s := startSite(t, 1, 1)
	slot, img := s.lab.Slots[0], s.lab.Images[0]
	users := []messages.User{{ID: 900, Login: "bob", UID: 20002}}
	client, err := s.lab.Guests.NewClient(context.Background(), "bob-pc")
	if err != nil {
		t.Fatal(err)
	}
	target := &messages.TargetImage{ImageID: 88, Name: "vmwarelinux-crashcapture-v1", RevisionID: 880, Revision: 1}
	for _, tc := range []struct {
		kind   messages.Kind
		killAt string // the step during which the worker dies
		req    func() *messages.Request
		check  func(t *testing.T, res *messages.Result)
	}{
		{messages.KindNew, messages.LoadMachineBooted, func() *messages.Request {
			return s.lab.Request(devlab.RequestSpec{Kind: messages.KindNew, Slot: slot, Image: img, Reservation: 801, Request: 901})
		}, func(t *testing.T, res *messages.Result) {
			if res.RequestState != "reserved" {
				t.Errorf("new: %+v", res)
			}
			if vms := slotVMs(t, slot); len(vms) != 1 || vms[0].Power != "poweredOn" {
				t.Errorf("slot VMs: %+v", vms)
			}
			if cur, err := inGuest(t, slot, "cat", "/root/currentimage.txt"); err != nil || !strings.Contains(cur, "vcld_post_load=success") {
				t.Errorf("guest not post-loaded: %q %v", cur, err)
			}
		}},
		{messages.KindReserved, messages.LoadAddingUser, func() *messages.Request {
			return s.lab.Request(devlab.RequestSpec{Kind: messages.KindReserved, Slot: slot, Image: img, Reservation: 801, Request: 901, Users: users, RemoteIP: client.IP().String()})
		}, func(t *testing.T, res *messages.Result) {
			if res.RequestState != "inuse" {
				t.Errorf("reserved: %+v", res)
			}
			if out, err := inGuest(t, slot, "id", "-u", "bob"); err != nil || strings.TrimSpace(out) != "20002" {
				t.Errorf("bob: %q %v", out, err)
			}
			if out, err := inGuest(t, slot, "iptables-save"); err != nil || !strings.Contains(out, client.IP().String()) {
				t.Errorf("no firewall exception for %s: %v\n%s", client.IP(), err, out)
			}
		}},
		{messages.KindImage, messages.LoadInfo, func() *messages.Request {
			return s.lab.Request(devlab.RequestSpec{Kind: messages.KindImage, Slot: slot, Image: img, Reservation: 801, Request: 901, Users: users, Target: target})
		}, func(t *testing.T, res *messages.Result) {
			if res.ComputerState != "reload" || res.ImageSizeMB < 4 {
				t.Errorf("image: %+v", res)
			}
			if _, err := os.Stat(filepath.Join(slot.Host.DatastoreDir(devlab.Datastore), target.Name, target.Name+".vmdk")); err != nil {
				t.Errorf("captured image: %v", err)
			}
			if vms := slotVMs(t, slot); len(vms) != 0 {
				t.Errorf("captured VM left: %+v", vms)
			}
		}},
		{messages.KindReclaim, messages.LoadTransferVM, func() *messages.Request {
			return s.lab.Request(devlab.RequestSpec{Kind: messages.KindReclaim, Slot: slot, Image: img, Reservation: 801, Request: 901, Users: users})
		}, func(t *testing.T, res *messages.Result) {
			if res.ComputerState != "available" {
				t.Errorf("reclaim: %+v", res)
			}
			if vms := slotVMs(t, slot); len(vms) != 1 || vms[0].Power != "poweredOn" {
				t.Errorf("slot VMs after reclaim: %+v", vms)
			}
		}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			slow := slot.Host.AddFault(esxsim.FaultRule{Delay: 100 * time.Millisecond}) // so the kill lands mid-step
			proc := s.startWorkerProcess(t, "doomed-"+string(tc.kind))
			seq := s.submit(t, tc.req())
			waitStep(t, s, 801, seq, tc.killAt)
			if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = proc.Wait()
			slow()
			s.startWorker(t, "rescuer-"+string(tc.kind), 2)
			res := s.result(t, 801, seq, flowWait)
			if res.Outcome != messages.OutcomeSuccess || !strings.HasPrefix(res.Worker, "rescuer") {
				t.Fatalf("after the crash: %+v\n%s", res, s.dump(801))
			}
			tc.check(t, res)
			if n := s.countResults(t, 801, seq); n != 1 {
				t.Errorf("%d results for one request", n)
			}
		})
	}
}

func (s *site) countResults(t *testing.T, reservation int64, seq uint64) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n := 0
	err := eventlog.Read(ctx, s.js.JS, eventlog.Filter{Reservation: reservation, Type: "result"}, func(ev eventlog.Event) error {
		if ev.Result != nil && ev.Result.RequestSeq == seq {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
