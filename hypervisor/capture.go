package hypervisor

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/messages"
)

// Capture makes the slot's VM into a new base image spec.Target (VCL's capture):
//
//  1. It refuses (ErrImageExists) if the target exists on the datastore or in the
//     repository.
//  2. If the VM is on, it calls shutdown (the OS layer's hook; may be nil), waits up
//     to ShutdownTimeout for the VM to power off, then powers it off hard.
//  3. It copies the VM's disk chain, consolidated, into a temporary folder and moves
//     it to <datastorepath>/<target>/ in one operation; then the same from there into
//     <repositorypath>/<target>/ if the profile has a repository.
//  4. It returns the new image's size (descriptor plus extents, in MB).
//
// The VM is left registered and powered off; the caller removes it (Remove) when the
// capture is recorded.
func (c *ESX) Capture(ctx context.Context, spec CaptureSpec, shutdown ShutdownFunc) (CaptureResult, error) {
	if err := spec.Slot.Validate(); err != nil {
		return CaptureResult{}, err
	}
	if err := messages.ValidImageName(spec.Target); err != nil {
		return CaptureResult{}, fmt.Errorf("%w: target: %w", ErrInvalid, err)
	}
	if _, err := spec.Profile.paths(); err != nil {
		return CaptureResult{}, err
	}
	var err error
	if spec.Profile, err = c.resolveProfile(ctx, spec.Slot.ShortName, spec.Profile); err != nil {
		return CaptureResult{}, err
	}
	pp, _ := spec.Profile.paths()
	short, target := spec.Slot.ShortName, spec.Target
	op := "capture " + target
	log := c.log.With().Int64("reservation", spec.Reservation).Int64("computer", spec.Slot.ComputerID).Str("slot", short).Str("image", target).Logger()
	wrap := func(err error) (CaptureResult, error) {
		return CaptureResult{}, fmt.Errorf("reservation %d: %s: %w", spec.Reservation, op, err)
	}

	base := pp.basePath(target)
	unlock, err := c.lockImage(ctx, c.cfg.Name+"|"+base.String())
	if err != nil {
		return wrap(err)
	}
	defer unlock()
	targets := []dsPath{base}
	if repo, ok := pp.repoPath(target); ok {
		targets = append(targets, repo)
	}
	for _, t := range targets {
		if ok, err := c.exists(ctx, short, t.Dir()); err != nil {
			return wrap(err)
		} else if ok {
			return wrap(&OpError{Host: c.cfg.Name, Slot: short, Op: op, Kind: ErrImageExists, Err: fmt.Errorf("%s exists", t.Dir())})
		}
	}

	v, err := c.slotVM(ctx, spec.Slot, "")
	if err != nil {
		return wrap(err)
	}
	if v.power != PoweredOff {
		off := false
		if shutdown != nil {
			sctx, cancel := context.WithTimeout(ctx, c.cfg.ShutdownTimeout)
			err := shutdown(sctx)
			cancel()
			if err != nil {
				log.Warn().Err(err).Msg("guest shutdown failed; powering off hard")
			} else if off, err = c.waitPowerOff(ctx, short, v.ref, c.cfg.ShutdownTimeout); err != nil {
				return wrap(err)
			}
			if !off {
				log.Warn().Dur("waited", c.cfg.ShutdownTimeout).Msg("guest did not power off; powering off hard")
			}
		}
		if !off {
			if err := c.powerOff(ctx, short, v.ref); err != nil {
				return wrap(err)
			}
		}
	}

	disks := v.devices.SelectByType((*types.VirtualDisk)(nil))
	if len(disks) == 0 {
		return wrap(&OpError{Host: c.cfg.Name, Slot: short, Op: op, Kind: ErrNotFound, Err: fmt.Errorf("VM %s has no disk", v.name)})
	}
	b, ok := disks[0].(*types.VirtualDisk).Backing.(types.BaseVirtualDeviceFileBackingInfo)
	if !ok {
		return wrap(&OpError{Host: c.cfg.Name, Slot: short, Op: op, Kind: ErrUnsupported, Err: fmt.Errorf("VM %s disk is not file-backed", v.name)})
	}
	top, ok := parseDSPath(b.GetVirtualDeviceFileBackingInfo().FileName)
	if !ok {
		return wrap(&OpError{Host: c.cfg.Name, Slot: short, Op: op, Kind: ErrFault, Err: fmt.Errorf("disk path %q", b.GetVirtualDeviceFileBackingInfo().FileName)})
	}
	if err := c.installDisk(ctx, short, top, pp.images, target); err != nil {
		if errors.Is(err, ErrExists) {
			err = &OpError{Host: c.cfg.Name, Slot: short, Op: op, Kind: ErrImageExists, Err: err}
		}
		return wrap(err)
	}
	res := CaptureResult{BasePath: base.String()}
	if len(targets) > 1 {
		if err := c.mkdir(ctx, short, targets[1].Dir().Dir()); err != nil {
			return wrap(err)
		}
		if err := c.installDisk(ctx, short, base, targets[1].Dir().Dir(), target); err != nil {
			return wrap(err)
		}
		res.RepositoryPath = targets[1].String()
	}
	bytes, err := c.imageBytes(ctx, short, base)
	if err != nil {
		return wrap(err)
	}
	res.SizeMB = ceilMB(bytes)
	log.Info().Int64("size_mb", res.SizeMB).Str("base", res.BasePath).Msg("captured")
	return res, nil
}
