// Package streams defines vclq's JetStream streams, consumers and KV buckets as code,
// ensures them on a server or cluster, and exports the same definitions as JSON for
// `nats stream add --config` so that operators who manage JetStream with the nats CLI
// get exactly what the code expects.
//
// Two modes ensure the definitions, both idempotent and safe to run from any number
// of components at once (creation is create-or-compare, transient cluster errors are
// retried within EnsureTimeout):
//
//   - Converge (every worker, bridge and `vclq dev` at start): create what is
//     missing, compare what exists and report the differences; never change an
//     existing asset, its replica count above all.
//   - Apply (`vclq nats init` only): Converge, then update what differs, replica
//     counts included, on the operator's explicit request.
package streams
