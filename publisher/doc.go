// Package publisher publishes vclq's loadlog and result events and its dead letters.
//
// Every event carries a deterministic Nats-Msg-Id (messages.Loadlog.MsgID,
// messages.Result.MsgID, "dlq-<original sequence>" for dead letters), so a retried
// publish, a re-run step or a redelivered request never stores an event twice within
// the streams' duplicate window. Publishes are retried with a bounded exponential
// backoff; each call blocks until the server stored the message or the retries are
// spent. Nothing here logs payloads: events carry no secrets in clear, but dead
// letters hold whatever the original request held.
package publisher
