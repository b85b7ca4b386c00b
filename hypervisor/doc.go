// Package hypervisor provisions VCL slots on standalone VMware ESX hosts: node status,
// image presence, size and retrieval, load, capture, power and removal (the
// provisioning module contract of VCL_REFERENCE.md §1), on govmomi.
//
// The package exports domain types (Slot, Profile, Image, LoadSpec, CaptureSpec,
// VMStatus) and one concrete client per host, ESX; govmomi types stay inside. Inputs
// are validated with the messages rules before anything touches a host, because names
// become datastore paths. vSphere faults are mapped once, in errors.go, to the error
// values of this package; every failed host call is an *OpError naming host, slot and
// call.
//
// Layout and naming follow VCL (VCL_REFERENCE.md §4), so old and new tooling find the
// same VMs:
//
//   - VM and folder: <vmpath>/<short>_<imageid>-v<revision>/<same>.vmx; a slot's VMs and
//     orphan folders are found by ^<short>_\d+-v\d+.
//   - Shared base disk: <datastorepath>/<imagename>/<imagename>.vmdk, repository copy
//     under <repositorypath>/<imagename>/.
//   - vmdisk=shared: the VM's disk is a child (delta) of the shared base: a linked clone
//     made by Reconfigure, never CloneVM_Task (standalone ESX has none).
//   - vmdisk=dedicated: a full copy (CopyVirtualDisk into a temporary folder, then one
//     move into the VM folder).
//   - Metadata (image id, imagerevision id, image name, computer id) in the VM's
//     extraConfig (Key* constants); Status reads it back.
//
// A load is offered both as phase methods for the worker's named steps
// (RemoveSlotVMs = startload, TransferDisk = transfervm, SetupVM = vmsetupconfig,
// StartVM = startvm) and as Load, which runs them and reports each loadlog step to a
// Progress.
//
// Every method takes ctx first and honours its cancellation. Every call is bounded
// (HostConfig.CallTimeout, TaskTimeout), runs under the host's concurrency limit
// (MaxConcurrent, shared by every job using the same *ESX), and transient faults
// (network failure, timeout, TaskInProgress, HTTP 502/503/504) are retried with
// exponential backoff up to MaxAttempts; permanent ones (NotFound, NoPermission,
// InsufficientResources, ...) fail at once. Waiting for a task is retried apart from
// starting it, so a lost answer never starts a task twice.
package hypervisor
