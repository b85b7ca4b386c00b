// Package flow runs VCL's reservation state flows — new, reload, reserved, reclaim and
// image — as ordered lists of small named steps, each step's name its VCL loadlog name
// (statuscheck, loadimageblade, doesimageexists, startload, transfervm, ...). The
// runner, not the step, emits the loadlog events (begin, end with duration, fail), so
// the bridge writes the rows VCL's web progress bar reads.
//
// Handler adapts the flows to the worker pool (worker.Handler): it picks the ESX host
// of the request, the guest's OS operations, runs the kind's flow and returns the
// result in VCL's state_exit vocabulary. On failure or cancellation it rolls back what
// the failed flow left half done (a half-loaded VM is removed, never reported ready);
// on shutdown or a lost lease it does not touch the slot again.
package flow
