package esxsim_test

import (
	"context"
	"fmt"
	"os"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/messages"
)

// A lab for `vclq dev`: two hosts, a base image on each, connection settings printed,
// guests booted as their VMs power on, and a load through the hypervisor package.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lab, err := esxsim.Start(ctx, esxsim.Options{Hosts: 2})
	if err != nil {
		panic(err)
	}
	defer lab.Close()
	for _, h := range lab.Hosts {
		if _, err := h.SeedImage(esxsim.DefaultDatastore, "", "centos7", 16<<20); err != nil {
			panic(err)
		}
	}
	_ = lab.WriteEnv(os.Stderr) // VCSIM_URL=https://vclq:...@127.0.0.1:PORT/sdk, VCSIM_THUMBPRINT=...

	go func() {
		_ = lab.WatchPower(ctx, func(e esxsim.PowerEvent) {
			if e.PoweredOn() {
				// e.g. guestlab: boot the guest of computer e.ExtraConfig[hypervisor.KeyComputerID]
				_ = e.ExtraConfig[hypervisor.KeyComputerID]
			}
		})
	}()

	pool, err := hypervisor.NewPool(lab.HostConfigs())
	if err != nil {
		panic(err)
	}
	defer pool.Close(ctx)
	esx, _ := pool.Host("esx0")
	err = esx.Load(ctx, hypervisor.LoadSpec{
		Reservation: 1,
		Slot:        hypervisor.Slot{ComputerID: 7, ShortName: "vm1", RAMMB: 512, CPUs: 1, Eth0MAC: "00:50:56:00:00:07"},
		Profile:     hypervisor.Profile{DatastorePath: "/vmfs/volumes/datastore1", Switch0: "virtualswitch0", VMDisk: messages.VMDiskShared},
		Image:       hypervisor.Image{ID: 3, Name: "centos7", RevisionID: 4, Revision: 0, OSType: messages.OSLinux},
	}, nil)
	fmt.Println(err)
	// Output: <nil>
}
