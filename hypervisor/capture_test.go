package hypervisor_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/messages"
)

func TestCapture(t *testing.T) {
	cases := []struct {
		name string
		// shutdown is the OS layer's hook; guestOff says whether it really turns the
		// guest off (otherwise the capture must power off hard after the timeout).
		guestOff bool
		hookErr  error
		disk     string
	}{
		{name: "guest shuts down (linked clone)", guestOff: true, disk: messages.VMDiskShared},
		{name: "guest ignores the shutdown (dedicated)", disk: messages.VMDiskDedicated},
		{name: "shutdown hook fails", hookErr: errors.New("ssh: connection refused"), disk: messages.VMDiskShared},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := lab(t)
			c := client(t, h, func(cfg *hypervisor.HostConfig) { cfg.ShutdownTimeout = 500 * time.Millisecond })
			ctx := testCtx(t)
			spec := hypervisor.LoadSpec{Slot: slot("pc20", 30), Profile: profile(tc.disk), Image: image(baseImage, 12, 3)}
			if err := c.Load(ctx, spec, nil); err != nil {
				t.Fatal(err)
			}
			vmName := hypervisor.VMName(spec.Slot, spec.Image)
			var hookCalls atomic.Int32
			hook := func(ctx context.Context) error {
				hookCalls.Add(1)
				if tc.guestOff {
					return setPower(ctx, h, vmName, false)
				}
				return tc.hookErr
			}
			const target = "centos7-custom"
			res, err := c.Capture(ctx, hypervisor.CaptureSpec{Reservation: 5, Slot: spec.Slot, Profile: spec.Profile, Target: target}, hook)
			if err != nil {
				t.Fatal(err)
			}
			if hookCalls.Load() != 1 {
				t.Errorf("shutdown hook called %d times, want 1", hookCalls.Load())
			}
			if ps := powerState(t, h, vmName); ps != types.VirtualMachinePowerStatePoweredOff {
				t.Errorf("VM is %s after capture, want poweredOff", ps)
			}
			// The new base holds the whole disk (the chain consolidated), in its own folder.
			files := browse(t, h, "datastore1", "images/"+target)
			if files[target+"-flat.vmdk"] != testImageSize {
				t.Errorf("new base %v: flat is %d bytes, want %d", files, files[target+"-flat.vmdk"], testImageSize)
			}
			wantMB := (files[target+".vmdk"] + files[target+"-flat.vmdk"] + 1<<20 - 1) >> 20
			if res.SizeMB != wantMB || res.SizeMB < testImageSize>>20 {
				t.Errorf("SizeMB = %d, want %d (descriptor plus extent)", res.SizeMB, wantMB)
			}
			if want := fmt.Sprintf("[datastore1] images/%s/%s.vmdk", target, target); res.BasePath != want {
				t.Errorf("BasePath = %q, want %q", res.BasePath, want)
			}
			if repo := browse(t, h, "repo", "vcl/"+target); repo[target+"-flat.vmdk"] != testImageSize {
				t.Errorf("repository copy = %v", repo)
			}
			for n := range browse(t, h, "datastore1", "images") {
				if n != baseImage && n != target {
					t.Errorf("unexpected folder images/%s (a temporary folder left behind?)", n)
				}
			}

			// The target now exists: a second capture is refused, nothing changes.
			_, err = c.Capture(ctx, hypervisor.CaptureSpec{Slot: spec.Slot, Profile: spec.Profile, Target: target}, nil)
			if !errors.Is(err, hypervisor.ErrImageExists) {
				t.Fatalf("second capture: err = %v, want ErrImageExists", err)
			}

			// A later load from the captured image works and clones the new base.
			if err := c.Remove(ctx, spec.Slot, spec.Profile); err != nil {
				t.Fatal(err)
			}
			next := hypervisor.LoadSpec{Slot: spec.Slot, Profile: profile(messages.VMDiskShared), Image: image(target, 13, 0)}
			if err := c.Load(ctx, next, nil); err != nil {
				t.Fatal(err)
			}
			verifyLoaded(t, h, next)
			size, err := c.ImageSize(ctx, next.Profile, target)
			if err != nil || size != res.SizeMB {
				t.Errorf("ImageSize = %d, %v; want %d", size, err, res.SizeMB)
			}
		})
	}
}

func TestCaptureRefusesExistingRepositoryImage(t *testing.T) {
	h := lab(t)
	c := client(t, h)
	ctx := testCtx(t)
	spec := hypervisor.LoadSpec{Slot: slot("pc21", 31), Profile: profile(messages.VMDiskShared), Image: image(baseImage, 12, 3)}
	if err := c.Load(ctx, spec, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := h.SeedImage("repo", "vcl", "taken", 1<<20); err != nil {
		t.Fatal(err)
	}
	_, err := c.Capture(ctx, hypervisor.CaptureSpec{Slot: spec.Slot, Profile: spec.Profile, Target: "taken"}, nil)
	if !errors.Is(err, hypervisor.ErrImageExists) {
		t.Fatalf("err = %v, want ErrImageExists", err)
	}
	if ps := powerState(t, h, hypervisor.VMName(spec.Slot, spec.Image)); ps != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("refused capture touched the VM: %s", ps)
	}
	if files := browse(t, h, "datastore1", "images/taken"); files != nil {
		t.Errorf("refused capture wrote images/taken: %v", files)
	}
}
