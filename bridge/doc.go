// Package bridge lets an existing Apache VCL site (web UI + MySQL/MariaDB) use vclq
// instead of the Perl vcld.
//
// Requests out: every Config.Interval (12 s, vcld's check-in interval) the bridge reads
// the request/reservation rows assigned to its management node(s) that are due (the
// check_time rule, see Due), turns each into a messages.Request, claims it with VCL's
// own compare-and-set (X/<last> → pending/X) and, in the same transaction, writes the
// `begin` computerloadlog row and the message into an outbox table of its own. The
// outbox is then published to VCL_REQUESTS with Nats-Msg-Id = Request.MsgID(), and a
// row leaves the outbox only once JetStream acknowledged it. A crash anywhere in between
// re-publishes the same message id, which JetStream drops as a duplicate. A row that
// cannot become a valid message is failed (request → failed/X) with the reason in a
// `failed` computerloadlog row; it is never silently skipped.
//
// Events back: a durable pull consumer (messages.ConsumerBridge, ConsumerConfig) on
// VCL_EVENTS. Loadlog events become computerloadlog rows; results apply VCL's
// state_exit (request and computer states, current image, image size and revision after
// a capture, reservation.pw from a sealed password, the `exited` row). Each event is
// applied in one transaction together with its id in vclq_applied, so a replayed or
// redelivered event changes nothing.
//
// Outages: a failing database or NATS is retried with backoff; nothing is claimed while
// the outbox cannot be published, and an event is acknowledged only after its
// transaction committed. See docs/bridge.md.
package bridge
