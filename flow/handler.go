package flow

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/osconfig"
	"github.com/vclq/vclq/worker"
)

// Config wires the flows to the hosts and guests.
type Config struct {
	// VMs returns the host a request's vmhost names (by vmhost.hostname). Required.
	VMs func(vmhost string) (VMs, error)
	// Guest returns the OS operations for a slot's guest, reporting to p. Required.
	Guest func(t osconfig.Target, osType string, p osconfig.Progress) (Guest, error)
	// ExpectNewHostKey announces that a slot was re-imaged by us (osconfig's host key
	// policy); SettleHostKey withdraws the announcement when the load is over. Optional.
	ExpectNewHostKey, SettleHostKey func(slot string)
	// Sealer seals user passwords for the bridge. Optional: without it, passwords are
	// not transported (accounts keep their SSH keys).
	Sealer *Sealer
	// ManagementIP is what guest firewalls always allow when a request names none.
	ManagementIP string
	// LinuxBootWait and WindowsBootWait. default: VCL's (5/600/5 s and 15/900/8 s).
	LinuxBootWait, WindowsBootWait BootWait
	Log                            zerolog.Logger
}

// Handler runs the state flows for the worker pool.
type Handler struct{ cfg Config }

// NewHandler checks cfg.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.VMs == nil || cfg.Guest == nil {
		return nil, errors.New("flow: Config.VMs and Config.Guest are required")
	}
	if cfg.LinuxBootWait.Timeout <= 0 {
		cfg.LinuxBootWait = LinuxBootWait
	}
	if cfg.WindowsBootWait.Timeout <= 0 {
		cfg.WindowsBootWait = WindowsBootWait
	}
	return &Handler{cfg: cfg}, nil
}

// Handle runs the request's flow. See worker.Handler for the contract. It returns
// only once every loadlog event of the job is stored; if some cannot be, it fails
// with a retryable error whatever the flow's outcome (see eventsStored).
func (h *Handler) Handle(ctx context.Context, job *worker.Job) (res messages.Result, err error) {
	req := job.Request
	log := h.cfg.Log.With().Int64("reservation", req.Reservation.ID).Str("computer", req.Computer.ShortName).
		Str("kind", string(req.Kind)).Str("worker", job.Worker).Logger()
	f, err := h.newFlow(req)
	if err != nil {
		return failedStates(req.Kind), worker.Permanent(fmt.Errorf("reservation %d: %w", req.Reservation.ID, err))
	}
	r := newRunner(job.Events, log)
	defer func() { res, err = eventsStored(r, req, res, err) }()
	f.run, f.Delivery = r, job.Delivery
	r.guard = job.Guard

	switch req.Kind {
	case messages.KindNew, messages.KindReload:
		err = h.loadFlow(ctx, f, r)
	case messages.KindReserved:
		err = r.run(ctx, f, stepReserved{}, stepAddUsers{}, stepGrantAccess{})
		f.Result.RequestState, f.Result.ComputerState = messages.StateInUse, messages.StateInUse
	case messages.KindReclaim:
		err = h.reclaimFlow(ctx, f, r)
	case messages.KindImage:
		err = h.imageFlow(ctx, f, r)
	default:
		err = worker.Permanent(fmt.Errorf("no flow for kind %q", req.Kind))
	}
	if err == nil {
		return f.Result, nil
	}
	return h.failed(ctx, job, f, r, err)
}

// eventsStored waits until every loadlog event of the job is stored (runner.flush)
// and passes the flow's outcome on. If some are not stored, the outcome must not be
// claimed (a result is stored only after all of its job's loadlog events): the job
// fails with a retryable error even if the flow succeeded or failed permanently, so
// the request is run again and its events (deterministic dedup ids) stored then, each
// once. The failed result's states are the kind's failure states and it carries no
// passwords.
func eventsStored(r *runner, req *messages.Request, res messages.Result, err error) (messages.Result, error) {
	ferr := r.flush()
	if ferr == nil {
		return res, err
	}
	ferr = fmt.Errorf("reservation %d: %w", req.Reservation.ID, ferr)
	r.log.Error().Err(ferr).AnErr("flow_error", err).Msg("loadlog events not stored: the job fails and will be retried")
	states := failedStates(req.Kind)
	res.RequestState, res.ComputerState = states.RequestState, states.ComputerState
	res.Passwords = nil
	if err == nil {
		return res, ferr
	}
	// %v, not %w: a permanent flow error must not make this failure permanent.
	return res, fmt.Errorf("%w (the flow failed too: %v)", ferr, err)
}

func (h *Handler) newFlow(req *messages.Request) (*Flow, error) {
	vms, err := h.cfg.VMs(req.VMHost.Hostname)
	if err != nil {
		return nil, fmt.Errorf("vmhost %s: %w", req.VMHost.Hostname, err)
	}
	f := &Flow{
		Req: req, VMs: vms, Sealer: h.cfg.Sealer,
		Slot:    hypervisor.SlotFromMessage(req.Computer),
		Profile: hypervisor.ProfileFromMessage(req.VMHost.Profile),
		Image:   imageOf(req.Image),
	}
	if req.Kind == messages.KindReclaim && req.NextImage != nil {
		f.Image = imageOf(*req.NextImage)
	}
	f.BootWait = h.cfg.LinuxBootWait
	if f.Image.OSType == messages.OSWindows {
		f.BootWait = h.cfg.WindowsBootWait
	}
	mgmt := req.ManagementNodeIP
	if mgmt == "" {
		mgmt = h.cfg.ManagementIP
	}
	target := osconfig.Target{Slot: req.Computer.ShortName, IP: req.Computer.PrivateIP, Hostname: req.Computer.Hostname, ManagementIP: mgmt}
	f.Guest, err = h.cfg.Guest(target, f.Image.OSType, progress{f})
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", req.Computer.ShortName, err)
	}
	short := req.Computer.ShortName
	if h.cfg.ExpectNewHostKey != nil {
		f.ExpectNewHostKey = func() { h.cfg.ExpectNewHostKey(short) }
	}
	if h.cfg.SettleHostKey != nil {
		f.SettleHostKey = func() { h.cfg.SettleHostKey(short) }
	}
	return f, nil
}

// loadFlow is new.pm: status check, then the load as node status requires, then the
// kind's ending.
func (h *Handler) loadFlow(ctx context.Context, f *Flow, r *runner) error {
	if err := r.run(ctx, f, stepStatusCheck{}); err != nil {
		return err
	}
	if err := h.load(ctx, f, r, f.Readiness); err != nil {
		return err
	}
	f.Result.ImageID, f.Result.ImageRevisionID = f.Image.ID, f.Image.RevisionID
	f.Result.IP = f.Req.Computer.PrivateIP
	if f.Req.Kind == messages.KindReload {
		f.Result.RequestState, f.Result.ComputerState = messages.StateComplete, messages.StateAvailable
		return r.run(ctx, f, marker{name: messages.LoadNodeReady})
	}
	// new: Windows accounts are made when the node is ready; Linux ones when the
	// user acknowledges (reserved).
	var ending []Step
	if f.Image.OSType == messages.OSWindows {
		ending = append(ending, stepAddUsers{})
	}
	ending = append(ending, marker{name: messages.LoadNodeReady})
	f.Result.RequestState, f.Result.ComputerState = messages.StateReserved, messages.StateReserved
	return r.run(ctx, f, ending...)
}

// load brings the slot to the flow's image as readiness requires.
func (h *Handler) load(ctx context.Context, f *Flow, r *runner, readiness osconfig.Readiness) error {
	switch readiness {
	case osconfig.Ready:
		return nil
	case osconfig.PostLoad:
		return r.run(ctx, f, stepPostLoad{})
	}
	if err := r.run(ctx, f,
		marker{name: messages.LoadImageBlade, detail: func(f *Flow) string {
			return fmt.Sprintf("loading %s on %s", f.Image.Name, f.Req.VMHost.Hostname)
		}},
		stepDoesImageExist{},
	); err != nil {
		return err
	}
	if !f.ImageFound {
		if err := r.run(ctx, f, stepRetrieveImage{}); err != nil {
			return err
		}
	}
	return r.run(ctx, f,
		stepStartLoad{},
		stepTransferVM{},
		stepVMSetupConfig{},
		stepStartVM{},
		stepMachineBooted{},
		stepPostLoad{},
	)
}

// reclaimFlow is reclaim.pm: sanitise an untouched machine, reload anything else.
// Unlike vcld, which leaves the computer in `reload` for a follow-up request, the
// reload happens here, so the slot ends `available` with its next image loaded.
func (h *Handler) reclaimFlow(ctx context.Context, f *Flow, r *runner) error {
	name := messages.LoadDeleted
	if f.Req.Request.State == messages.StateTimeout {
		name = messages.LoadTimeout
	}
	if err := r.run(ctx, f, stepReclaimCheck{name: name}); err != nil {
		return err
	}
	sanitized := false
	if f.Sanitizable && f.Image.ID == f.Req.Image.ID && f.Image.RevisionID == f.Req.Image.RevisionID {
		err := r.run(ctx, f, stepSanitize{})
		switch {
		case err == nil:
			sanitized = true
		case errors.Is(err, osconfig.ErrUserLoggedIn):
			// A user logged in since the check: the machine is no longer clean.
		default:
			return err
		}
	}
	if !sanitized {
		if err := h.load(ctx, f, r, osconfig.Reload); err != nil {
			return err
		}
	}
	f.Result.ImageID, f.Result.ImageRevisionID = f.Image.ID, f.Image.RevisionID
	f.Result.RequestState, f.Result.ComputerState = messages.StateComplete, messages.StateAvailable
	return r.run(ctx, f, marker{name: messages.LoadNodeReady})
}

// imageFlow is image.pm: capture the slot's VM as a new image, then remove the VM;
// the computer goes to `reload` (a reload follows). Failures end in maintenance.
func (h *Handler) imageFlow(ctx context.Context, f *Flow, r *runner) error {
	f.Image = imageOf(f.Req.Image)
	if err := r.run(ctx, f, stepCapture{}, stepRemoveVM{}); err != nil {
		return err
	}
	t := *f.Req.TargetImage
	f.Result.ImageSizeMB = f.Captured.SizeMB
	f.Result.NewImage = &t
	f.Result.RequestState, f.Result.ComputerState = messages.StateComplete, messages.StateReload
	return nil
}

// failed finishes a flow that returned err: roll back unless the worker is shutting
// down or lost the slot, record VCL's failure rows on the final attempt, and classify
// the error for the pool.
func (h *Handler) failed(ctx context.Context, job *worker.Job, f *Flow, r *runner, err error) (messages.Result, error) {
	res := f.Result
	states := failedStates(f.Req.Kind)
	res.RequestState, res.ComputerState = states.RequestState, states.ComputerState
	res.Passwords = nil
	cause := context.Cause(ctx)
	if ctx.Err() != nil && (errors.Is(cause, worker.ErrShutdown) || errors.Is(cause, worker.ErrLeaseLost)) {
		// Another worker takes over (shutdown) or already holds the slot (lease
		// lost): touch nothing.
		return res, err
	}
	r.cleanup(ctx, f)
	err = fmt.Errorf("reservation %d slot %s host %s: %w", f.Req.Reservation.ID, f.Req.Computer.ShortName, f.Req.VMHost.Hostname, err)
	if ctx.Err() != nil && errors.Is(cause, worker.ErrCancelled) {
		r.note(ctx, messages.LoadInfo, "cancelled: "+cause.Error())
		return res, err
	}
	permanent := isPermanent(err)
	if permanent || job.Delivery >= job.MaxDeliver {
		if f.loadStarted {
			r.note(ctx, messages.LoadImageFailed, err.Error())
		}
		r.note(ctx, messages.LoadFailed, err.Error())
	}
	if permanent {
		return res, worker.Permanent(err)
	}
	return res, err
}

// failedStates are VCL's states after a failure: image captures go to maintenance,
// everything else to failed.
func failedStates(k messages.Kind) messages.Result {
	if k == messages.KindImage {
		return messages.Result{RequestState: messages.StateMaintenance, ComputerState: messages.StateMaintenance}
	}
	return messages.Result{RequestState: messages.StateFailed, ComputerState: messages.StateFailed}
}

// isPermanent: errors that no redelivery can fix.
func isPermanent(err error) bool {
	for _, e := range []error{
		hypervisor.ErrNotFound, hypervisor.ErrPermission, hypervisor.ErrAuth, hypervisor.ErrInsufficientResources,
		hypervisor.ErrImageExists, hypervisor.ErrThumbprint, hypervisor.ErrInvalid, hypervisor.ErrUnsupported,
		hypervisor.ErrConflict, hypervisor.ErrFault,
		osconfig.ErrInvalidInput, osconfig.ErrHostKeyChanged, osconfig.ErrUnsupportedOS, osconfig.ErrUserLoggedIn,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return worker.IsPermanent(err)
}

func imageOf(im messages.Image) hypervisor.Image { return hypervisor.ImageFromMessage(im) }

func captureSpec(f *Flow) hypervisor.CaptureSpec {
	return hypervisor.CaptureSpec{Reservation: f.Req.Reservation.ID, Slot: f.Slot, Profile: f.Profile, Target: f.Req.TargetImage.Name}
}
