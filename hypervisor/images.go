package hypervisor

import (
	"context"
	"errors"
	"fmt"

	"github.com/vclq/vclq/messages"
)

// ImageExists reports whether the base image <datastorepath>/<name>/<name>.vmdk is on
// the host's datastore (VCL's does_image_exist).
func (c *ESX) ImageExists(ctx context.Context, p Profile, name string) (bool, error) {
	if err := messages.ValidImageName(name); err != nil {
		return false, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	pp, err := c.hostPaths(ctx, "", p)
	if err != nil {
		return false, err
	}
	return c.exists(ctx, "", pp.basePath(name))
}

// ImageSize is the base image's size in MB (rounded up) on the host's datastore: its
// descriptor plus extents (VCL's get_image_size). A missing image is ErrNotFound.
func (c *ESX) ImageSize(ctx context.Context, p Profile, name string) (int64, error) {
	if err := messages.ValidImageName(name); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	pp, err := c.hostPaths(ctx, "", p)
	if err != nil {
		return 0, err
	}
	b, err := c.imageBytes(ctx, "", pp.basePath(name))
	return ceilMB(b), err
}

// imageBytes sums descriptor and extents of the disk at base (".../<name>/<name>.vmdk").
func (c *ESX) imageBytes(ctx context.Context, slot string, base dsPath) (int64, error) {
	name := base.Dir().Base()
	files, err := c.list(ctx, slot, base.Dir(), name+"*.vmdk")
	if err != nil {
		return 0, err
	}
	b, found := diskFiles(files, name)
	if !found {
		return 0, &OpError{Host: c.cfg.Name, Slot: slot, Op: "image size", Kind: ErrNotFound, Err: fmt.Errorf("no disk %s", base)}
	}
	return b, nil
}

// RetrieveImage copies a missing base image from the profile's repository into the
// host's datastore (VCL's retrieve_image). The copy goes into a temporary folder that
// is then moved into place in one operation, so a partial image is never visible
// under the image's name. Concurrent calls for the same image and datastore in this
// process copy it once (a per-image lock); across processes, the loser of the final
// move discards its copy. An image already present is success. Without a repository,
// or when the repository lacks the image, it fails with ErrNotFound.
func (c *ESX) RetrieveImage(ctx context.Context, p Profile, name string) error {
	if err := messages.ValidImageName(name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	pp, err := c.hostPaths(ctx, "", p)
	if err != nil {
		return err
	}
	base := pp.basePath(name)
	unlock, err := c.lockImage(ctx, c.cfg.Name+"|"+base.String())
	if err != nil {
		return c.opErr("RetrieveImage "+name, "", 0, err)
	}
	defer unlock()
	if ok, err := c.exists(ctx, "", base); err != nil || ok {
		return err
	}
	src, ok := pp.repoPath(name)
	if !ok {
		return &OpError{Host: c.cfg.Name, Op: "RetrieveImage " + name, Kind: ErrNotFound, Err: errors.New("image is not on the datastore and the profile has no repository")}
	}
	if ok, err := c.exists(ctx, "", src); err != nil {
		return err
	} else if !ok {
		return &OpError{Host: c.cfg.Name, Op: "RetrieveImage " + name, Kind: ErrNotFound, Err: fmt.Errorf("image is in neither %s nor %s", base, src)}
	}
	c.log.Info().Str("image", name).Str("from", src.String()).Str("to", base.String()).Msg("retrieving image")
	err = c.installDisk(ctx, "", src, pp.images, name)
	if errors.Is(err, ErrExists) {
		return nil // another management node installed it first
	}
	return err
}

// installDisk copies disk src into a temporary folder under parent, then moves that
// folder to parent/<name> in one operation. If parent/<name> appeared meanwhile, the
// copy is discarded and ErrExists returned.
func (c *ESX) installDisk(ctx context.Context, slot string, src, parent dsPath, name string) error {
	tmp := parent.Join(tempName(name))
	cleanup := func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.CallTimeout)
		defer cancel()
		if err := c.remove(cctx, slot, tmp); err != nil {
			c.log.Warn().Err(err).Str("dir", tmp.String()).Msg("could not remove temporary folder")
		}
	}
	if err := c.mkdir(ctx, slot, tmp); err != nil {
		return err
	}
	if err := c.copyDisk(ctx, slot, src, tmp.Join(name+".vmdk")); err != nil {
		cleanup()
		return err
	}
	if err := c.move(ctx, slot, tmp, parent.Join(name)); err != nil {
		cleanup()
		return err
	}
	return nil
}
