package worker

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/metrics"
	"github.com/vclq/vclq/publisher"
)

// Config of a Pool. The zero value is usable: every field has a default.
type Config struct {
	// ID names the worker in events, results, logs and the registry.
	// default: <hostname>-<pid>.
	ID string `json:"id,omitempty"`
	// Version is reported in the registry. default: "dev".
	Version string `json:"version,omitempty"`
	// Concurrency is the number of job slots: jobs run at once by this process.
	// default: 4.
	Concurrency int `json:"concurrency,omitempty"`
	// LeaseTTL is the slot lease's time to live (whole seconds, >= 1s): a crashed
	// worker's slot is free again after at most this long. Renewed every LeaseTTL/3.
	// default: 30s.
	LeaseTTL time.Duration `json:"lease_ttl,omitempty"`
	// AckWait must match the consumer's AckWait; InProgress is sent every AckWait/3.
	// default: the consumer's AckWait.
	AckWait time.Duration `json:"ack_wait,omitempty"`
	// MaxDeliver must match the consumer's MaxDeliver: the delivery on which a failure
	// becomes final (dead letter + failed result). default: the consumer's MaxDeliver.
	MaxDeliver int `json:"max_deliver,omitempty"`
	// ShutdownGrace is how long in-flight jobs may run on after shutdown began, before
	// they are cancelled with ErrShutdown and handed back. default: 30s.
	ShutdownGrace time.Duration `json:"shutdown_grace,omitempty"`
	// StopTimeout is how long a cancelled handler gets to return before its message is
	// handed back without it (its lease is then left to expire). default: 10s.
	StopTimeout time.Duration `json:"stop_timeout,omitempty"`
	// BusySlotWait bounds how long a job waits in place (sending InProgress, watching
	// the lease key) for a busy slot before it Naks with RetryDelay. default: 10m.
	BusySlotWait time.Duration `json:"busy_slot_wait,omitempty"`
	// RetryDelay is the NakWithDelay of a retryable failure on the first delivery,
	// doubled for each later delivery up to MaxRetryDelay. default: 5s.
	RetryDelay time.Duration `json:"retry_delay,omitempty"`
	// MaxRetryDelay caps RetryDelay's doubling. default: 2m.
	MaxRetryDelay time.Duration `json:"max_retry_delay,omitempty"`
	// HeartbeatInterval is how often the registry entry is written; keep it well below
	// the vclq_workers bucket TTL. default: 5s.
	HeartbeatInterval time.Duration `json:"heartbeat_interval,omitempty"`
	// PollWait is how long one pull request waits at the server for messages.
	// default: 2s.
	PollWait time.Duration `json:"poll_wait,omitempty"`
	// DisableSweeper turns off the dead-letter sweeper of this process (the sweeper
	// consumer is shared: one sweeping worker is enough). default: false (sweeps).
	DisableSweeper bool `json:"disable_sweeper,omitempty"`
	// SkipSlotOrdering turns off per-slot ordering (admission against the slot's
	// served record): a stale delivery could then act again. For the benchmark that
	// measures the ordering's cost only; no configuration file can set it.
	SkipSlotOrdering bool `json:"-"`
	// Publisher tunes event publishing (retries, timeouts).
	Publisher publisher.Options `json:"publisher,omitzero"`
	// Metrics receives the pool's metrics (package metrics). default: nil, none.
	Metrics *metrics.Worker `json:"-"`
	// QueueInfoInterval is how often, with Metrics set, the consumer info is read
	// in the background for the queue gauges and readiness. default: 5s.
	QueueInfoInterval time.Duration `json:"-"`
}

func (c Config) withDefaults() (Config, error) {
	if c.ID == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "worker"
		}
		c.ID = h + "-" + strconv.Itoa(os.Getpid())
	}
	if err := messages.ValidWorker(c.ID); err != nil {
		return c, fmt.Errorf("%w: id: %v", ErrConfig, err)
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Concurrency == 0 {
		c.Concurrency = 4
	}
	if c.Concurrency < 0 || c.Concurrency > 10000 {
		return c, fmt.Errorf("%w: concurrency %d is not 1-10000", ErrConfig, c.Concurrency)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.LeaseTTL, 30*time.Second)
	def(&c.ShutdownGrace, 30*time.Second)
	def(&c.StopTimeout, 10*time.Second)
	def(&c.BusySlotWait, 10*time.Minute)
	def(&c.RetryDelay, 5*time.Second)
	def(&c.MaxRetryDelay, 2*time.Minute)
	def(&c.HeartbeatInterval, 5*time.Second)
	def(&c.PollWait, 2*time.Second)
	def(&c.QueueInfoInterval, defaultQueueInfoInterval)
	if c.LeaseTTL < time.Second {
		return c, fmt.Errorf("%w: lease TTL %s is less than 1s (KV TTLs are whole seconds)", ErrConfig, c.LeaseTTL)
	}
	// Whole seconds: round up.
	c.LeaseTTL = (c.LeaseTTL + time.Second - 1).Truncate(time.Second)
	for name, d := range map[string]time.Duration{
		"ack wait": c.AckWait, "shutdown grace": c.ShutdownGrace, "stop timeout": c.StopTimeout,
		"busy slot wait": c.BusySlotWait, "retry delay": c.RetryDelay, "max retry delay": c.MaxRetryDelay,
		"heartbeat interval": c.HeartbeatInterval, "poll wait": c.PollWait,
	} {
		if d < 0 {
			return c, fmt.Errorf("%w: %s %s is negative", ErrConfig, name, d)
		}
	}
	if c.PollWait < 100*time.Millisecond {
		return c, fmt.Errorf("%w: poll wait %s is less than 100ms", ErrConfig, c.PollWait)
	}
	if c.MaxDeliver < 0 {
		return c, fmt.Errorf("%w: max deliver %d is negative", ErrConfig, c.MaxDeliver)
	}
	return c, nil
}
