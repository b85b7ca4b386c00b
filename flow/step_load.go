package flow

import (
	"context"
	"fmt"

	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/osconfig"
)

// stepDoesImageExist checks the base image on the host's datastore.
type stepDoesImageExist struct{}

func (stepDoesImageExist) Name() string { return messages.LoadDoesImageExist }

func (stepDoesImageExist) Run(ctx context.Context, f *Flow) error {
	ok, err := f.VMs.ImageExists(ctx, f.Profile, f.Image.Name)
	if err != nil {
		return err
	}
	f.ImageFound = ok
	if ok {
		f.Detail("image %s is on the datastore", f.Image.Name)
	} else {
		f.Detail("image %s is missing: retrieving it", f.Image.Name)
	}
	return nil
}

// stepRetrieveImage copies a missing image from the repository (VCL's
// copyfrompartnerMN / retrieve_image).
type stepRetrieveImage struct{}

func (stepRetrieveImage) Name() string { return messages.LoadCopyFromPartnerMN }

func (stepRetrieveImage) Run(ctx context.Context, f *Flow) error {
	if err := f.VMs.CheckSpace(ctx, f.loadSpec()); err != nil {
		return err
	}
	return f.VMs.RetrieveImage(ctx, f.Profile, f.Image.Name)
}

// stepStartLoad removes whatever occupies the slot (registered VMs and orphan
// directories). Its cleanup removes the half-loaded VM when a later step fails or the
// load is cancelled, so no half-loaded VM is ever left running or reported ready.
type stepStartLoad struct{}

func (stepStartLoad) Name() string { return messages.LoadStartLoad }

func (stepStartLoad) Run(ctx context.Context, f *Flow) error {
	f.loadStarted = true
	if err := f.VMs.RemoveSlotVMs(ctx, f.Slot, f.Profile); err != nil {
		return err
	}
	// The VM is re-imaged from here on: its next SSH host key may be new.
	if f.ExpectNewHostKey != nil {
		f.ExpectNewHostKey()
	}
	return nil
}

func (stepStartLoad) Cleanup(ctx context.Context, f *Flow) {
	if f.SettleHostKey != nil {
		defer f.SettleHostKey()
	}
	if err := f.VMs.RemoveSlotVMs(ctx, f.Slot, f.Profile); err != nil && f.run != nil {
		f.run.log.Error().Err(err).Msg("rollback: could not remove the half-loaded VM")
		f.run.note(ctx, messages.LoadWarning, "rollback: could not remove the half-loaded VM: "+err.Error())
	}
}

// stepTransferVM checks the datastore has room (RAM + image/4, as VCL does), then
// makes the disk: a linked clone of the shared base, or a full copy.
type stepTransferVM struct{}

func (stepTransferVM) Name() string { return messages.LoadTransferVM }

func (stepTransferVM) Run(ctx context.Context, f *Flow) error {
	if err := f.VMs.CheckSpace(ctx, f.loadSpec()); err != nil {
		return err
	}
	if err := f.VMs.TransferDisk(ctx, f.loadSpec()); err != nil {
		return err
	}
	if f.Profile.VMDisk == messages.VMDiskDedicated {
		f.Detail("full copy of %s", f.Image.Name)
	} else {
		f.Detail("linked clone of %s", f.Image.Name)
	}
	return nil
}

// stepVMSetupConfig creates and configures the VM (name, CPUs, RAM, NICs, metadata).
type stepVMSetupConfig struct{}

func (stepVMSetupConfig) Name() string { return messages.LoadVMSetupConfig }

func (stepVMSetupConfig) Run(ctx context.Context, f *Flow) error {
	if err := f.VMs.SetupVM(ctx, f.loadSpec()); err != nil {
		return err
	}
	f.Loaded = true
	return nil
}

// stepStartVM powers the VM on.
type stepStartVM struct{}

func (stepStartVM) Name() string { return messages.LoadStartVM }

func (stepStartVM) Run(ctx context.Context, f *Flow) error { return f.VMs.StartVM(ctx, f.loadSpec()) }

// stepMachineBooted waits, bounded, until the guest answers SSH.
type stepMachineBooted struct{}

func (stepMachineBooted) Name() string { return messages.LoadMachineBooted }

func (stepMachineBooted) Run(ctx context.Context, f *Flow) error {
	w := f.BootWait
	return f.Guest.WaitForResponse(ctx, w.InitialDelay, w.Timeout, w.Interval)
}

// stepPostLoad runs the OS post-load (firewall, random root password, hostname,
// vcld_post_load tag). VCL writes loadimagecomplete once the load, post-load
// included, succeeded; the row is written as the step begins.
type stepPostLoad struct{}

func (stepPostLoad) Name() string { return messages.LoadImageComplete }

func (stepPostLoad) Run(ctx context.Context, f *Flow) error {
	if err := f.Guest.PostLoad(ctx); err != nil {
		return err
	}
	if f.loadStarted && f.SettleHostKey != nil {
		f.SettleHostKey() // the re-imaged guest's key is recorded: the load is over
	}
	f.Detail("image %s loaded, post-load done", f.Image.Name)
	return nil
}

// stepAddUsers creates the reservation's accounts and seals their passwords.
type stepAddUsers struct{}

func (stepAddUsers) Name() string { return messages.LoadAddingUser }

func (stepAddUsers) Run(ctx context.Context, f *Flow) error {
	users := make([]osconfig.User, 0, len(f.Req.Users))
	for _, u := range f.Req.Users {
		users = append(users, osconfig.User{Login: u.Login, UID: u.UID, SSHKeys: u.SSHKeys, RootAccess: u.RootAccess})
	}
	if len(users) == 0 {
		f.Detail("no users")
		return nil
	}
	creds, err := f.Guest.AddUsers(ctx, users)
	if err != nil {
		return err
	}
	f.Credentials = creds
	if err := f.sealCredentials(); err != nil {
		return err
	}
	f.Detail("added %d user(s)", len(creds))
	return nil
}

// sealCredentials puts the sealed passwords into the result. Without a sealer the
// passwords are not transported at all (the accounts keep their keys).
func (f *Flow) sealCredentials() error {
	if f.Sealer == nil {
		return nil
	}
	byLogin := map[string]int64{}
	for _, u := range f.Req.Users {
		byLogin[u.Login] = u.ID
	}
	f.Result.Passwords = f.Result.Passwords[:0]
	for _, c := range f.Credentials {
		sealed, err := f.Sealer.Seal(string(c.Password))
		if err != nil {
			return fmt.Errorf("user %s: %w", c.Login, err)
		}
		f.Result.Passwords = append(f.Result.Passwords, messages.SealedPassword{UserID: byLogin[c.Login], Login: c.Login, Sealed: sealed})
	}
	return nil
}
