package flow

import (
	"context"
	"time"

	"github.com/vclq/vclq/messages"
)

// stepReserved starts reserved.pm's work: the user acknowledged the reservation; the
// guest must answer before accounts are added.
type stepReserved struct{}

func (stepReserved) Name() string { return messages.LoadReserved }

func (stepReserved) Run(ctx context.Context, f *Flow) error {
	return f.Guest.WaitForResponse(ctx, 0, time.Minute, 2*time.Second)
}

// stepGrantAccess opens the connect method (SSH) to the user's remote IP only.
type stepGrantAccess struct{}

func (stepGrantAccess) Name() string { return messages.LoadPostReserve }

func (stepGrantAccess) Run(ctx context.Context, f *Flow) error {
	if err := f.Guest.GrantAccess(ctx, f.Req.RemoteIP); err != nil {
		return err
	}
	f.Detail("access granted to %s", f.Req.RemoteIP)
	return nil
}
