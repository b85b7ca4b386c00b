package flow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/osconfig"
	"github.com/vclq/vclq/worker"
)

// fakeVMs is a slot on a host, in memory.
type fakeVMs struct {
	mu        sync.Mutex
	calls     []string
	status    hypervisor.VMStatus
	images    map[string]bool
	failOn    map[string]error
	blockOn   string // call that blocks until ctx ends
	captureMB int64
}

func (v *fakeVMs) call(ctx context.Context, name string) error {
	v.mu.Lock()
	v.calls = append(v.calls, name)
	err := v.failOn[name]
	block := v.blockOn == name
	v.mu.Unlock()
	if block {
		<-ctx.Done()
		return context.Cause(ctx)
	}
	return err
}

func (v *fakeVMs) Calls() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return strings.Join(v.calls, ",")
}

func (v *fakeVMs) Status(ctx context.Context, _ hypervisor.Slot, _ hypervisor.Profile) (hypervisor.VMStatus, error) {
	return v.status, v.call(ctx, "Status")
}
func (v *fakeVMs) ImageExists(ctx context.Context, _ hypervisor.Profile, name string) (bool, error) {
	return v.images[name], v.call(ctx, "ImageExists")
}
func (v *fakeVMs) ImageSize(ctx context.Context, _ hypervisor.Profile, _ string) (int64, error) {
	return v.captureMB, v.call(ctx, "ImageSize")
}
func (v *fakeVMs) RetrieveImage(ctx context.Context, _ hypervisor.Profile, name string) error {
	v.images[name] = true
	return v.call(ctx, "RetrieveImage")
}
func (v *fakeVMs) RemoveSlotVMs(ctx context.Context, _ hypervisor.Slot, _ hypervisor.Profile) error {
	v.status = hypervisor.VMStatus{}
	return v.call(ctx, "RemoveSlotVMs")
}
func (v *fakeVMs) TransferDisk(ctx context.Context, _ hypervisor.LoadSpec) error {
	return v.call(ctx, "TransferDisk")
}
func (v *fakeVMs) CheckSpace(ctx context.Context, _ hypervisor.LoadSpec) error {
	return v.call(ctx, "CheckSpace")
}
func (v *fakeVMs) SetupVM(ctx context.Context, s hypervisor.LoadSpec) error {
	if err := v.call(ctx, "CreateVM"); err != nil {
		return err
	}
	v.status = hypervisor.VMStatus{Name: hypervisor.VMName(s.Slot, s.Image), Registered: true, Present: true, PowerState: hypervisor.PoweredOff,
		ImageID: s.Image.ID, ImageRevisionID: s.Image.RevisionID, ComputerID: s.Slot.ComputerID, ImageName: s.Image.Name}
	return nil
}
func (v *fakeVMs) StartVM(ctx context.Context, _ hypervisor.LoadSpec) error {
	v.status.PowerState = hypervisor.PoweredOn
	return v.call(ctx, "PowerOn")
}
func (v *fakeVMs) Capture(ctx context.Context, _ hypervisor.CaptureSpec, shutdown hypervisor.ShutdownFunc) (hypervisor.CaptureResult, error) {
	if err := shutdown(ctx); err != nil {
		return hypervisor.CaptureResult{}, err
	}
	return hypervisor.CaptureResult{SizeMB: v.captureMB}, v.call(ctx, "Capture")
}

// fakeGuest is a guest, in memory.
type fakeGuest struct {
	mu       sync.Mutex
	calls    []string
	status   osconfig.NodeStatus
	loggedIn []string
	failOn   map[string]error
}

func (g *fakeGuest) call(name string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, name)
	return g.failOn[name]
}
func (g *fakeGuest) Calls() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.Join(g.calls, ",")
}
func (g *fakeGuest) WaitForResponse(context.Context, time.Duration, time.Duration, time.Duration) error {
	return g.call("WaitForResponse")
}
func (g *fakeGuest) NodeStatus(context.Context) (osconfig.NodeStatus, error) {
	return g.status, g.call("NodeStatus")
}
func (g *fakeGuest) PostLoad(context.Context) error { return g.call("PostLoad") }
func (g *fakeGuest) AddUsers(_ context.Context, users []osconfig.User) ([]osconfig.Credential, error) {
	var c []osconfig.Credential
	for _, u := range users {
		c = append(c, osconfig.Credential{Login: u.Login, Password: osconfig.Secret("pw-of-" + u.Login + "-Zq9!")})
	}
	return c, g.call("AddUsers")
}
func (g *fakeGuest) GrantAccess(context.Context, string) error { return g.call("GrantAccess") }
func (g *fakeGuest) LoggedInUsers(context.Context) ([]string, error) {
	return g.loggedIn, g.call("LoggedInUsers")
}
func (g *fakeGuest) Sanitize(context.Context, []string) error   { return g.call("Sanitize") }
func (g *fakeGuest) PreCapture(context.Context, []string) error { return g.call("PreCapture") }

// recorder is the job's event sink.
type recorder struct {
	mu       sync.Mutex
	events   []messages.Loadlog
	received []time.Time   // when each event reached the sink
	delay    time.Duration // how long each publish takes
}

func (r *recorder) Loadlog(_ context.Context, e worker.StepEvent) error {
	time.Sleep(r.delay)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, messages.Loadlog{Step: e.Step, Name: e.Name, Phase: e.Phase, Info: e.Info, DurationMS: e.Duration.Milliseconds(), Time: e.At})
	r.received = append(r.received, time.Now())
	return nil
}

// names lists "name" for begin events and "name!" for info rows: the rows the bridge
// writes, in order.
func (r *recorder) names() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		switch e.Phase {
		case messages.PhaseBegin:
			out = append(out, e.Name)
		case messages.PhaseInfo:
			out = append(out, e.Name+"!")
		case messages.PhaseFail:
			out = append(out, e.Name+"(fail)")
		}
	}
	return strings.Join(out, ",")
}

func (r *recorder) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprint(r.events)
}

func request(t *testing.T, kind messages.Kind) *messages.Request {
	t.Helper()
	b, err := os.ReadFile("../messages/testdata/" + string(kind) + ".json")
	if err != nil {
		t.Fatal(err)
	}
	r, err := messages.DecodeRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type harness struct {
	vms            *fakeVMs
	guest          *fakeGuest
	rec            *recorder
	h              *Handler
	rekey, settled []string
}

func newHarness(t *testing.T, sealer *Sealer) *harness {
	t.Helper()
	hs := &harness{
		vms:   &fakeVMs{images: map[string]bool{}, failOn: map[string]error{}},
		guest: &fakeGuest{failOn: map[string]error{}},
		rec:   &recorder{},
	}
	h, err := NewHandler(Config{
		VMs: func(string) (VMs, error) { return hs.vms, nil },
		Guest: func(osconfig.Target, string, osconfig.Progress) (Guest, error) {
			return hs.guest, nil
		},
		ExpectNewHostKey: func(slot string) { hs.rekey = append(hs.rekey, slot) },
		SettleHostKey:    func(slot string) { hs.settled = append(hs.settled, slot) },
		Sealer:           sealer,
		LinuxBootWait:    BootWait{0, time.Second, 10 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	hs.h = h
	return hs
}

func (hs *harness) handle(ctx context.Context, req *messages.Request, delivery int) (messages.Result, error) {
	return hs.h.Handle(ctx, &worker.Job{Request: req, Seq: 9, Delivery: delivery, MaxDeliver: 3, Fence: 1, Events: hs.rec, Worker: "w1"})
}

var errBoom = errors.New("boom")
