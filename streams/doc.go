// Package streams defines vclq's JetStream streams, consumers and KV buckets as code,
// creates or updates them idempotently (`vclq nats init`, and every worker at start),
// and exports the same definitions as JSON for `nats stream add --config` so that
// operators who manage JetStream with the nats CLI get exactly what the code expects.
package streams
