// Package esxsim runs simulated standalone ESX hosts (govmomi's vcsim in ESX mode) for
// tests, `vclq dev` and benchmarks.
//
// Each Host is its own simulator with its own HTTPS server on a loopback port and its
// own self-signed certificate (so each has a distinct TLS thumbprint). Its datastores
// are real temporary directories: disks are real files, and a copy really copies bytes.
// The harness makes vcsim behave more like real ESX where the provisioning code
// depends on it:
//
//   - CloneVM_Task is refused with NotSupported (standalone ESX has no clone).
//   - CopyVirtualDisk consolidates a linked clone: copying a child disk produces a
//     standalone disk holding the parent's bytes (vcsim's delta disks hold none), and the
//     copied descriptor names the copied extent (vcsim keeps the source's extent name).
//   - The networks (port groups) VCL uses, virtualswitch0 and virtualswitch1, exist.
//
// Faults and delays are injected per host with FaultRule (Host.AddFault), a
// thread-safe replacement for vcsim's own injector (which races under concurrent
// calls): a call fails with a fault (TransientFaults, Permanent), is delayed, or, with
// InTask, is accepted and its task fails without doing its work, as ESX reports most
// faults. Rules apply only to the worker login (Host.Username); the observer login used
// by tests to verify results (Host.Observer) and by WatchPower is never faulted.
// Host.Calls, FaultStats and PeakDelayed count what the worker did.
//
// Known vcsim races (reported by the race detector, in vcsim's code): a VM is visible
// in its folder and to container views while vcsim still fills it in without its lock,
// so reading it then races; and creating, reconfiguring or unregistering VMs on one
// datastore from several goroutines at once races on the Datastore object. Read VMs
// through the host's "vm" list (complete VMs only), as hypervisor and WatchPower do,
// and under -race serialise VM creation per host; datastore browsing, disk copies and
// the rest may run concurrently.
//
// Start a lab with Start (or StartTB in tests), seed base images with Host.SeedImage,
// hand Lab.HostConfigs to hypervisor.NewPool, print connection settings with
// Lab.WriteEnv, and watch VM power changes with Lab.WatchPower (name, power state and
// extraConfig of each VM) so that a guest lab can boot a guest when its VM powers on.
package esxsim
