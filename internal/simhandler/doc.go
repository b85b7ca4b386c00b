// Package simhandler is a worker.Handler for tests, `vclq dev` and benchmarks: it
// works for a configured time, fails, hangs or crashes on demand, and can keep a
// journal that proves, across processes, that no two handlers ever ran on one slot at
// the same moment.
//
// A spec is comma-separated key=value pairs:
//
//	work=50ms..150ms            time per job (uniform in the range, or one duration)
//	fail=reservations:7|9       fail these (retryable) on every delivery
//	failfirst=2                 fail the first 2 deliveries of every job, then succeed
//	permfail=reservations:3     fail these permanently (worker.Permanent)
//	failall=true                fail every job (retryable)
//	hang=reservations:5         block until the job's context ends
//	crash=reservations:11       os.Exit(3) the whole process at handler start
//	events=false                no loadlog events (default: an info event SimulatedNotice,
//	                            then begin/end of statuscheck, the end's info "simulated")
//	journal=/path/file          append begin/end lines; slot markers in /path/file.slots/
//
// Selectors are reservations:a|b|c, computers:a|b|c or kinds:new|reclaim.
package simhandler
