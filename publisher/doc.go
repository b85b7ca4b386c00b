// Package publisher publishes vclq's loadlog and result events and its dead letters.
//
// Every event carries a deterministic Nats-Msg-Id (messages.Loadlog.MsgID,
// messages.Result.MsgID, "dlq-<original sequence>" for dead letters), the same on
// every try, so a retried publish, a re-run step or a redelivered request never stores
// an event twice within the streams' duplicate window.
//
// Each call blocks until the server stored the message, or fails. A publish retries
// what a failover causes (timeouts, no responders, JetStream temporarily unavailable,
// a connection that is down or reconnecting) with a capped, jittered exponential
// backoff for a time budget (Options.Budget, default 60 s: longer than a stream leader
// election or a server restart), every try bounded by Options.Timeout, all within the
// caller's context. What no retry can fix fails at once: an invalid event
// (ErrInvalidEvent), a denied publish, a message too large, a subject no stream takes
// (ErrRejected). Nothing here logs payloads: events carry no secrets in clear, but
// dead letters hold whatever the original request held.
package publisher
