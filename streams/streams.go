package streams

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/messages"
)

// Options size the definitions. The zero value is usable: every field has a default.
type Options struct {
	// Replicas of every stream and bucket. default: 1 (use 3 on a 3-node cluster).
	// Converge uses it only for what it creates; only Apply (`vclq nats init`)
	// changes the replicas of what exists. Consumers take their stream's.
	Replicas int
	// AckWait of the workers' consumer: how long a delivery may go without an ack or
	// InProgress before it is redelivered. default: 60s.
	AckWait time.Duration
	// MaxDeliver is the delivery budget of one request. default: 5.
	MaxDeliver int
	// MaxAckPending bounds the requests in flight across all workers. default: 10000.
	MaxAckPending int
	// EventsMaxAge bounds how long events are kept for replay. default: 30 days.
	EventsMaxAge time.Duration
	// EventsMaxBytes bounds the event stream. default: 4 GiB.
	EventsMaxBytes int64
	// RequestsMaxMsgs bounds the request queue; a full queue refuses new requests
	// (discard new) rather than dropping queued ones. default: 100000.
	RequestsMaxMsgs int64
	// WorkerHeartbeatTTL is how long a worker stays listed without a heartbeat.
	// default: 30s.
	WorkerHeartbeatTTL time.Duration
}

func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Replicas, 1)
	def(&o.MaxDeliver, 5)
	def(&o.MaxAckPending, 10000)
	if o.AckWait <= 0 {
		o.AckWait = 60 * time.Second
	}
	if o.EventsMaxAge <= 0 {
		o.EventsMaxAge = 30 * 24 * time.Hour
	}
	if o.EventsMaxBytes <= 0 {
		o.EventsMaxBytes = 4 << 30
	}
	if o.RequestsMaxMsgs <= 0 {
		o.RequestsMaxMsgs = 100000
	}
	if o.WorkerHeartbeatTTL <= 0 {
		o.WorkerHeartbeatTTL = 30 * time.Second
	}
	return o
}

// Definitions is everything vclq needs in JetStream.
type Definitions struct {
	Streams   []jetstream.StreamConfig
	Consumers []Consumer
	Buckets   []jetstream.KeyValueConfig
}

// Consumer is a durable consumer and the stream it belongs to.
type Consumer struct {
	Stream string
	Config jetstream.ConsumerConfig
}

// DuplicateWindow is how long a Nats-Msg-Id is remembered: a row re-published by the
// bridge, a retried event publish or a re-driven dead letter within it is stored once.
const DuplicateWindow = 2 * time.Hour

// Define returns the definitions for the given options.
func Define(o Options) Definitions {
	o = o.withDefaults()
	d := Definitions{
		Streams: []jetstream.StreamConfig{
			{
				Name:        messages.StreamRequests,
				Description: "vclq: reservation requests, one subject per request kind (work queue)",
				Subjects:    messages.RequestSubjects(),
				Retention:   jetstream.WorkQueuePolicy,
				Storage:     jetstream.FileStorage,
				Discard:     jetstream.DiscardNew,
				MaxMsgs:     o.RequestsMaxMsgs,
				MaxBytes:    1 << 30,
				MaxMsgSize:  messages.MaxMessageSize + 4096,
				Duplicates:  DuplicateWindow,
				Replicas:    o.Replicas,
				AllowDirect: true,
			},
			{
				Name:        messages.StreamEvents,
				Description: "vclq: loadlog and result events per reservation (replayable)",
				Subjects:    []string{messages.SubjectEventsAll},
				Retention:   jetstream.LimitsPolicy,
				Storage:     jetstream.FileStorage,
				Discard:     jetstream.DiscardOld,
				MaxAge:      o.EventsMaxAge,
				MaxBytes:    o.EventsMaxBytes,
				MaxMsgSize:  messages.MaxMessageSize + 4096,
				Duplicates:  DuplicateWindow,
				Replicas:    o.Replicas,
				AllowDirect: true,
			},
			{
				Name:        messages.StreamDeadLetters,
				Description: "vclq: requests that could not be processed, with the reason in headers",
				Subjects:    []string{messages.SubjectDeadLetterAll},
				Retention:   jetstream.LimitsPolicy,
				Storage:     jetstream.FileStorage,
				// Never drop a dead letter silently: a full stream refuses new ones and the
				// worker keeps the request until an operator makes room.
				Discard:     jetstream.DiscardNew,
				MaxBytes:    1 << 30,
				MaxMsgSize:  messages.MaxMessageSize + 8192,
				Duplicates:  DuplicateWindow,
				Replicas:    o.Replicas,
				AllowDirect: true,
			},
			{
				Name:        messages.StreamAdvisories,
				Description: "vclq: JetStream max-deliveries and terminated advisories of VCL_REQUESTS",
				Subjects:    []string{messages.SubjectAdvisoryMaxDeliveries, messages.SubjectAdvisoryTerminated},
				Retention:   jetstream.LimitsPolicy,
				Storage:     jetstream.FileStorage,
				Discard:     jetstream.DiscardOld,
				MaxAge:      7 * 24 * time.Hour,
				MaxBytes:    64 << 20,
				Duplicates:  2 * time.Minute,
				Replicas:    o.Replicas,
			},
		},
		Consumers: []Consumer{
			{Stream: messages.StreamRequests, Config: jetstream.ConsumerConfig{
				Durable:       messages.ConsumerWorkers,
				Description:   "vclq workers: one message per free job slot",
				AckPolicy:     jetstream.AckExplicitPolicy,
				AckWait:       o.AckWait,
				MaxDeliver:    o.MaxDeliver,
				MaxAckPending: o.MaxAckPending,
				DeliverPolicy: jetstream.DeliverAllPolicy,
				ReplayPolicy:  jetstream.ReplayInstantPolicy,
				MaxWaiting:    512,
				// Replicas 0: the stream's. A work queue's consumer must have its
				// stream's count, and no consumer may exceed it.
			}},
			{Stream: messages.StreamAdvisories, Config: jetstream.ConsumerConfig{
				Durable:       messages.ConsumerDeadLetterSweeper,
				Description:   "vclq workers: move requests out of deliveries to the dead letters",
				AckPolicy:     jetstream.AckExplicitPolicy,
				AckWait:       30 * time.Second,
				MaxDeliver:    -1,
				MaxAckPending: 100,
				DeliverPolicy: jetstream.DeliverAllPolicy,
				ReplayPolicy:  jetstream.ReplayInstantPolicy,
			}},
		},
		Buckets: []jetstream.KeyValueConfig{
			{
				Bucket:      messages.BucketSlotLeases,
				Description: "vclq: one lease per VM slot while a pipeline runs on it (per-key TTL)",
				History:     1,
				Storage:     jetstream.FileStorage,
				Replicas:    o.Replicas,
				// Enables per-key TTLs (server >= 2.11); expired leases leave a marker
				// this long so watchers see the expiry.
				LimitMarkerTTL: time.Minute,
			},
			{
				Bucket:      messages.BucketHostKeys,
				Description: "vclq: each slot's SSH host key as the node that last loaded it recorded it",
				History:     5,
				Storage:     jetstream.FileStorage,
				Replicas:    o.Replicas,
			},
			{
				Bucket:      messages.BucketWorkers,
				Description: "vclq: worker registry (heartbeats) for vclq status",
				History:     1,
				TTL:         o.WorkerHeartbeatTTL,
				Storage:     jetstream.FileStorage,
				Replicas:    o.Replicas,
			},
		},
	}
	for i := range d.Streams {
		explicitLimits(&d.Streams[i])
	}
	return d
}

// explicitLimits writes -1 ("unlimited") where a limit is unset, as the server reports
// it, so that the exported files and the server's view read the same.
func explicitLimits(s *jetstream.StreamConfig) {
	for _, v := range []*int64{&s.MaxMsgs, &s.MaxBytes, &s.MaxMsgsPerSubject} {
		if *v == 0 {
			*v = -1
		}
	}
	if s.MaxMsgSize == 0 {
		s.MaxMsgSize = -1
	}
	if s.MaxConsumers == 0 {
		s.MaxConsumers = -1
	}
}
