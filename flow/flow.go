package flow

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/osconfig"
)

// VMs is what the flows need of the ESX host a slot lives on; *hypervisor.ESX
// implements it. Each call waits for its own task and is bounded.
type VMs interface {
	Status(ctx context.Context, slot hypervisor.Slot, p hypervisor.Profile) (hypervisor.VMStatus, error)
	ImageExists(ctx context.Context, p hypervisor.Profile, name string) (bool, error)
	RetrieveImage(ctx context.Context, p hypervisor.Profile, name string) error
	RemoveSlotVMs(ctx context.Context, slot hypervisor.Slot, p hypervisor.Profile) error
	CheckSpace(ctx context.Context, spec hypervisor.LoadSpec) error
	TransferDisk(ctx context.Context, spec hypervisor.LoadSpec) error
	SetupVM(ctx context.Context, spec hypervisor.LoadSpec) error
	StartVM(ctx context.Context, spec hypervisor.LoadSpec) error
	Capture(ctx context.Context, spec hypervisor.CaptureSpec, shutdown hypervisor.ShutdownFunc) (hypervisor.CaptureResult, error)
	ImageSize(ctx context.Context, p hypervisor.Profile, name string) (int64, error)
}

// Guest is what the flows need of the loaded machine; osconfig's Linux and Windows
// implement it.
type Guest interface {
	WaitForResponse(ctx context.Context, initialDelay, timeout, interval time.Duration) error
	NodeStatus(ctx context.Context) (osconfig.NodeStatus, error)
	PostLoad(ctx context.Context) error
	AddUsers(ctx context.Context, users []osconfig.User) ([]osconfig.Credential, error)
	GrantAccess(ctx context.Context, remoteIP string) error
	LoggedInUsers(ctx context.Context) ([]string, error)
	Sanitize(ctx context.Context, logins []string) error
	PreCapture(ctx context.Context, logins []string) error
}

// BootWait is VCL's wait_for_response(initial delay, timeout, interval).
type BootWait struct {
	InitialDelay, Timeout, Interval time.Duration
}

// VCL's defaults (VCL_REFERENCE.md §5).
var (
	LinuxBootWait   = BootWait{5 * time.Second, 600 * time.Second, 5 * time.Second}
	WindowsBootWait = BootWait{15 * time.Second, 900 * time.Second, 8 * time.Second}
)

// Flow is the typed state one job's steps share.
type Flow struct {
	Req *messages.Request
	// Delivery is the request's delivery count (1 first).
	Delivery int
	VMs      VMs
	Guest    Guest
	BootWait BootWait
	// ExpectNewHostKey tells the SSH layer that the slot was just re-imaged by us, so
	// its next host key may differ (and is recorded).
	ExpectNewHostKey func()
	// SettleHostKey withdraws that allowance once the load is complete or rolled back.
	SettleHostKey func()
	Sealer        *Sealer

	Slot    hypervisor.Slot
	Profile hypervisor.Profile
	// Image is what the flow loads: the reservation's image, or a reclaim's next image.
	Image hypervisor.Image

	// Filled by steps.
	Readiness   osconfig.Readiness
	ImageFound  bool
	Sanitizable bool // reclaim: untainted and nobody logged in
	Loaded      bool // this flow (re)created the slot's VM
	loadStarted bool // startload ran: a failure from here on is loadimagefailed
	Credentials []osconfig.Credential
	Captured    *hypervisor.CaptureResult
	Result      messages.Result

	// Current step, for Detail and progress (reports may come from other goroutines).
	mu       sync.Mutex
	step     int
	stepName string
	detail   string
	run      *runner
}

// Detail records free text for the current step's end event (never a secret).
func (f *Flow) Detail(format string, args ...any) { f.setDetail(fmt.Sprintf(format, args...)) }

func (f *Flow) setDetail(s string) {
	f.mu.Lock()
	f.detail = truncate(s)
	f.mu.Unlock()
}

func (f *Flow) current() (name, detail string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stepName, f.detail
}

func (f *Flow) enter(n int, name string) {
	f.mu.Lock()
	f.step, f.stepName, f.detail = n, name, ""
	f.mu.Unlock()
}

// loadSpec is the hypervisor's view of this flow's load.
func (f *Flow) loadSpec() hypervisor.LoadSpec {
	return hypervisor.LoadSpec{Reservation: f.Req.Reservation.ID, Slot: f.Slot, Profile: f.Profile, Image: f.Image}
}

// progress passes the hypervisor's and guest's own progress reports on. They come
// from inside a step, so they become that step's detail (the row of the step itself
// is the runner's); only a WARNING gets a row of its own, as in VCL.
type progress struct{ f *Flow }

func (p progress) Step(name, info string) {
	if name == messages.LoadWarning && p.f.run != nil {
		p.f.run.note(context.Background(), name, info)
		return
	}
	cur, _ := p.f.current()
	if name != cur {
		info = name + ": " + info
	}
	p.f.setDetail(info)
}
