package flow

import (
	"context"
	"time"

	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/osconfig"
)

// statusProbe bounds how long statuscheck waits for a guest that is supposed to be up.
const statusProbe = 20 * time.Second

// stepStatusCheck is VCL's node_status on both sides: the VM must be registered,
// powered on and carry the image (by the metadata the load wrote), and the guest's
// currentimage.txt must name it; READY also needs post-load done and no taint.
type stepStatusCheck struct{}

func (stepStatusCheck) Name() string { return messages.LoadStatusCheck }

func (stepStatusCheck) Run(ctx context.Context, f *Flow) error {
	f.Readiness = osconfig.Reload
	if f.Req.Request.State == messages.StateReinstall {
		// The user asked for a fresh machine: VCL reloads even a slot that is ready.
		f.Detail("RELOAD: reinstall requested")
		return nil
	}
	st, err := f.VMs.Status(ctx, f.Slot, f.Profile)
	if err != nil {
		return err
	}
	if !st.Carries(f.Slot, f.Image) || len(st.Others) > 0 {
		f.Detail("RELOAD: VM %q registered=%t power=%s image=%d/%d", st.Name, st.Registered, st.PowerState, st.ImageID, st.ImageRevisionID)
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, statusProbe)
	defer cancel()
	if err := f.Guest.WaitForResponse(pctx, 0, statusProbe, 2*time.Second); err != nil {
		f.Detail("RELOAD: VM carries the image but the guest does not answer")
		return nil
	}
	ns, err := f.Guest.NodeStatus(ctx)
	if err != nil {
		f.Detail("RELOAD: guest status unreadable")
		return nil
	}
	f.Readiness = ns.For(messages.Image{ID: f.Image.ID, Name: f.Image.Name, RevisionID: f.Image.RevisionID})
	f.Detail("%s: image %s", f.Readiness, ns.ImageName)
	return nil
}
