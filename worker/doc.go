// Package worker runs vclq's job pool: a fixed number of job slots per process, fed by
// the shared durable pull consumer on VCL_REQUESTS.
//
// A message is pulled only when a job slot is free (no prefetch). Each job:
//
//  1. is decoded and validated; an invalid message gets a rejected result and a dead
//     letter at once and is terminated;
//  2. claims its VM slot with a lease in the vclq_slots KV bucket (create-if-absent with
//     a per-key TTL); a busy slot makes the job wait in place, sending InProgress, up
//     to Config.BusySlotWait, and only then Nak with a delay;
//  3. runs the Handler under a context that is cancelled with a cause: ErrLeaseLost
//     when the lease cannot be renewed, ErrCancelled when a later request for the
//     reservation (reclaim) asked for it over the control subject, ErrShutdown after
//     the shutdown grace period;
//  4. gets exactly one result event per final outcome (dedup ids make repeats
//     harmless), then the message is acked (success, cancel), terminated (permanent
//     failure, last delivery) or Nak'd with a backoff (retryable failure, shutdown);
//  5. releases the lease (delete at its last revision).
//
// Every worker also runs a dead-letter sweeper on VCL_ADVISORIES (requests whose last
// delivery died with a crashed worker) and heartbeats its Registration into the
// vclq_workers bucket for `vclq status`.
//
// Pulls: each pull asks for as many messages as it holds free job slots, and a pool
// keeps at most 8 pulls open (the consumer's MaxWaiting, 512, is shared by every
// worker). Leases: a worker that released a slot remembers its delete marker's
// revision and re-claims that slot with one conditional publish; otherwise it uses
// kv.Create. Releases are kv.Delete at the last revision, done as the same publish so
// the marker's revision is known.
//
// Limits: JetStream counts every delivery against MaxDeliver, so a request whose
// last delivery is interrupted (shutdown after the grace period, a slot still busy
// after BusySlotWait, a crash) is dead-lettered with a failed result rather than
// retried; `vclq dlq replay` re-drives it. A handler that ignores its context keeps
// its slot until shutdown, where it is abandoned after StopTimeout.
package worker
