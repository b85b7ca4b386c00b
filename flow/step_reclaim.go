package flow

import (
	"context"
	"strings"
	"time"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/messages"
)

// stepReclaimCheck decides how a reservation ends (reclaim.pm): when the slot still
// carries the reservation's image, the guest answers, nobody logged in and the image
// is untainted, sanitising is enough; otherwise the slot is reloaded.
type stepReclaimCheck struct{ name string }

func (s stepReclaimCheck) Name() string { return s.name }

func (s stepReclaimCheck) Run(ctx context.Context, f *Flow) error {
	f.Sanitizable = false
	reservationImage := imageOf(f.Req.Image)
	st, err := f.VMs.Status(ctx, f.Slot, f.Profile)
	if err != nil {
		return err
	}
	if !st.Carries(f.Slot, reservationImage) {
		f.Detail("reload: the slot does not carry %s", reservationImage.Name)
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, statusProbe)
	defer cancel()
	if err := f.Guest.WaitForResponse(pctx, 0, statusProbe, 2*time.Second); err != nil {
		f.Detail("reload: the guest does not answer")
		return nil
	}
	ns, err := f.Guest.NodeStatus(ctx)
	if err != nil || ns.Tainted {
		f.Detail("reload: image tainted or status unreadable")
		return nil
	}
	users, err := f.Guest.LoggedInUsers(ctx)
	if err != nil || len(users) > 0 {
		f.Detail("reload: user(s) logged in: %s", strings.Join(users, ","))
		return nil
	}
	f.Sanitizable = true
	f.Detail("sanitize: untainted and nobody logged in")
	return nil
}

// stepSanitize deletes the reservation's accounts and firewall exceptions.
type stepSanitize struct{}

func (stepSanitize) Name() string { return messages.LoadInfo }

func (stepSanitize) Run(ctx context.Context, f *Flow) error {
	if err := f.Guest.Sanitize(ctx, f.logins()); err != nil {
		return err
	}
	f.Detail("sanitized: removed %d user(s) and their firewall exceptions", len(f.Req.Users))
	return nil
}

func (f *Flow) logins() []string {
	l := make([]string, 0, len(f.Req.Users))
	for _, u := range f.Req.Users {
		l = append(l, u.Login)
	}
	return l
}

// stepCapture turns the slot's VM into a new base image: the guest is sanitised and
// shut down through the OS hook, the VM powered off (hard after a bounded wait), its
// disk chain consolidated into the new image directory, its size recorded.
type stepCapture struct{}

func (stepCapture) Name() string { return messages.LoadInfo }

func (stepCapture) Run(ctx context.Context, f *Flow) error {
	t := f.Req.TargetImage
	if f.Delivery > 1 {
		// A first delivery that found the target existing failed permanently and was
		// never redelivered; so on a redelivery an existing target is the work of an
		// earlier attempt of this very request that died after its final move.
		exists, err := f.VMs.ImageExists(ctx, f.Profile, t.Name)
		if err != nil {
			return err
		}
		if exists {
			mb, err := f.VMs.ImageSize(ctx, f.Profile, t.Name)
			if err != nil {
				return err
			}
			f.Captured = &hypervisor.CaptureResult{SizeMB: mb}
			f.Detail("captured %s by an earlier delivery: %d MB", t.Name, mb)
			return nil
		}
	}
	res, err := f.VMs.Capture(ctx, captureSpec(f), func(ctx context.Context) error {
		return f.Guest.PreCapture(ctx, f.logins())
	})
	if err != nil {
		return err
	}
	f.Captured = &res
	f.Detail("captured %s: %d MB", t.Name, res.SizeMB)
	return nil
}

// stepRemoveVM deletes the captured VM: the slot is reloaded next.
type stepRemoveVM struct{}

func (stepRemoveVM) Name() string { return messages.LoadInfo }

func (stepRemoveVM) Run(ctx context.Context, f *Flow) error {
	if err := f.VMs.RemoveSlotVMs(ctx, f.Slot, f.Profile); err != nil {
		return err
	}
	f.Detail("removed the captured VM")
	return nil
}
