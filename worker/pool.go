package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/publisher"
)

// Pool is a worker process's job pool. Create it with New, run it with Run.
type Pool struct {
	js  jetstream.JetStream
	nc  *nats.Conn
	h   Handler
	cfg Config
	log zerolog.Logger
	pub *publisher.Publisher

	hostname string
	started  time.Time

	// Set up by Run.
	cons     jetstream.Consumer
	requests jetstream.Stream
	slots    jetstream.KeyValue
	registry jetstream.KeyValue

	// clock0 is the origin of Pool.mono.
	clock0 time.Time

	// markers remembers the revision of the delete marker this worker left on a slot
	// key (key → uint64), for a one-round-trip lease create next time.
	markers sync.Map
	// records caches the slot records this worker wrote last (key → cachedRecord),
	// for admission with one write instead of a read and a write.
	records sync.Map

	// ready is what the health checks report (metrics.go).
	ready readiness

	mu       sync.Mutex
	active   map[*job]struct{}
	draining bool

	// jobsCtx is the parent of every job's context; cancelled with ErrShutdown once the
	// shutdown grace period is over.
	jobsCtx    context.Context
	jobsCancel context.CancelCauseFunc
	jobs       sync.WaitGroup
}

// New returns a pool that runs h for every request. It validates cfg (ErrConfig) but
// does not touch the network: Run does.
func New(js jetstream.JetStream, nc *nats.Conn, h Handler, cfg Config, log zerolog.Logger) (*Pool, error) {
	if js == nil || nc == nil || h == nil {
		return nil, fmt.Errorf("%w: JetStream, connection and handler are required", ErrConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	log = log.With().Str("worker", cfg.ID).Logger()
	p := &Pool{
		js: js, nc: nc, h: h, cfg: cfg, log: log,
		pub:      publisher.New(js, cfg.Publisher, log),
		hostname: host,
		started:  time.Now().UTC(),
		clock0:   time.Now(),
		active:   map[*job]struct{}{},
	}
	p.jobsCtx, p.jobsCancel = context.WithCancelCause(context.Background())
	p.metrics().SetSlots(cfg.Concurrency)
	return p, nil
}

// ID is the worker id.
func (p *Pool) ID() string { return p.cfg.ID }

// Config is the effective configuration (defaults filled; AckWait and MaxDeliver are
// known once Run has started).
func (p *Pool) Config() Config { return p.cfg }

// Publisher is the pool's event publisher.
func (p *Pool) Publisher() *publisher.Publisher { return p.pub }

// Run pulls and runs jobs until ctx ends, then shuts down gracefully: it stops
// pulling, lets in-flight jobs finish within Config.ShutdownGrace, cancels the rest
// with ErrShutdown and hands their messages back (Nak) so that another worker takes
// them, and removes its registry entry. It blocks until then. It returns nil after a
// graceful shutdown, or the error that kept it from starting.
func (p *Pool) Run(ctx context.Context) error {
	if err := p.setup(ctx); err != nil {
		return err
	}
	p.log.Info().Int("concurrency", p.cfg.Concurrency).Dur("lease_ttl", p.cfg.LeaseTTL).
		Dur("ack_wait", p.cfg.AckWait).Int("max_deliver", p.cfg.MaxDeliver).Msg("worker started")

	sub, err := p.nc.Subscribe(messages.SubjectControlCancelPrefix+"*", p.onCancel)
	if err != nil {
		return fmt.Errorf("worker %s: subscribe to cancel requests: %w", p.cfg.ID, err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	// Background tasks outlive ctx until the jobs are done.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var bgWG sync.WaitGroup
	bgWG.Add(1)
	go func() { defer bgWG.Done(); p.heartbeat(bg) }()
	if p.cfg.Metrics != nil {
		bgWG.Add(1)
		go func() { defer bgWG.Done(); p.refreshQueueInfo(bg) }()
	}
	if !p.cfg.DisableSweeper {
		bgWG.Add(1)
		go func() { defer bgWG.Done(); p.sweep(ctx) }()
	}

	p.pull(ctx)

	p.mu.Lock()
	p.draining = true
	n := len(p.active)
	p.mu.Unlock()
	p.log.Info().Int("jobs", n).Dur("grace", p.cfg.ShutdownGrace).Msg("worker stopping: no more pulls, waiting for jobs")
	p.writeRegistration(bg)

	done := make(chan struct{})
	go func() { p.jobs.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(p.cfg.ShutdownGrace):
		p.log.Warn().Int("jobs", p.activeCount()).Msg("shutdown grace over: cancelling jobs, handing them back")
		p.jobsCancel(ErrShutdown)
		select {
		case <-done:
		case <-time.After(p.cfg.StopTimeout):
			p.abandonAll()
		}
	}
	p.jobsCancel(ErrShutdown)
	stopBG()
	bgWG.Wait()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := p.registry.Delete(dctx, RegistryKey(p.cfg.ID)); err != nil {
		p.log.Warn().Err(err).Msg("remove registry entry")
	}
	p.log.Info().Msg("worker stopped")
	return nil
}

// setup binds the consumer, streams and buckets and resolves AckWait and MaxDeliver.
func (p *Pool) setup(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var err error
	p.cons, err = p.js.Consumer(sctx, messages.StreamRequests, messages.ConsumerWorkers)
	if err != nil {
		return fmt.Errorf("worker %s: consumer %s on %s (run `vclq nats init`): %w", p.cfg.ID, messages.ConsumerWorkers, messages.StreamRequests, err)
	}
	ci := p.cons.CachedInfo()
	if err := p.matchConsumer(sctx, ci); err != nil {
		return err
	}
	if p.cfg.AckWait < 300*time.Millisecond {
		return fmt.Errorf("%w: ack wait %s is too short", ErrConfig, p.cfg.AckWait)
	}
	if p.requests, err = p.js.Stream(sctx, messages.StreamRequests); err != nil {
		return fmt.Errorf("worker %s: stream %s: %w", p.cfg.ID, messages.StreamRequests, err)
	}
	if p.slots, err = p.js.KeyValue(sctx, messages.BucketSlotLeases); err != nil {
		return fmt.Errorf("worker %s: bucket %s: %w", p.cfg.ID, messages.BucketSlotLeases, err)
	}
	if p.registry, err = p.js.KeyValue(sctx, messages.BucketWorkers); err != nil {
		return fmt.Errorf("worker %s: bucket %s: %w", p.cfg.ID, messages.BucketWorkers, err)
	}
	p.ready.bound.Store(true)
	return nil
}

// matchConsumer takes AckWait and MaxDeliver the worker left unset from the consumer,
// and refuses values that differ from the consumer's (*ConsumerMismatchError).
func (p *Pool) matchConsumer(ctx context.Context, ci *jetstream.ConsumerInfo) error {
	e := &ConsumerMismatchError{Consumer: messages.ConsumerWorkers, ConsumerAckWait: ci.Config.AckWait.String(),
		ConsumerMaxDeliver: ci.Config.MaxDeliver, StreamReplicas: 1}
	if p.cfg.AckWait == 0 {
		p.cfg.AckWait = ci.Config.AckWait
	} else if p.cfg.AckWait != ci.Config.AckWait {
		e.Mismatches = append(e.Mismatches, Mismatch{"ack wait", p.cfg.AckWait.String(), ci.Config.AckWait.String()})
	}
	if p.cfg.MaxDeliver == 0 {
		p.cfg.MaxDeliver = ci.Config.MaxDeliver
	} else if p.cfg.MaxDeliver != ci.Config.MaxDeliver {
		e.Mismatches = append(e.Mismatches, Mismatch{"max deliver", strconv.Itoa(p.cfg.MaxDeliver), strconv.Itoa(ci.Config.MaxDeliver)})
	}
	if len(e.Mismatches) == 0 {
		return nil
	}
	if s, err := p.js.Stream(ctx, messages.StreamRequests); err == nil {
		e.StreamReplicas = s.CachedInfo().Config.Replicas
	}
	return e
}

// maxPulls bounds the pull requests one pool keeps open at once (the consumer's
// MaxWaiting is shared by every worker).
const maxPulls = 8

// pull fetches messages only for free job slots until ctx ends. Slots are reserved
// before the pull: a pull asks for as many messages as it holds free slots, and each
// message starts its job at once (nothing waits in a client buffer). Up to maxPulls
// pulls are open at once, so a slot freed while another pull is still open is refilled
// without waiting for it.
func (p *Pool) pull(ctx context.Context) {
	slots := make(chan struct{}, p.cfg.Concurrency)
	pulls := make(chan struct{}, maxPulls)
	var open sync.WaitGroup
	defer open.Wait()
	errDelay := 100 * time.Millisecond
	for {
		select {
		case pulls <- struct{}{}:
		case <-ctx.Done():
			return
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			<-pulls
			return
		}
		n := 1
	more:
		for n < p.cfg.Concurrency {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		release := func(k int) {
			for range k {
				<-slots
			}
		}
		batch, err := p.cons.Fetch(n, jetstream.FetchMaxWait(p.cfg.PollWait))
		if err != nil {
			release(n)
			<-pulls
			p.log.Warn().Err(err).Msg("pull failed")
			if wait.Sleep(ctx, errDelay) != nil {
				return
			}
			errDelay = min(2*errDelay, 5*time.Second)
			continue
		}
		errDelay = 100 * time.Millisecond
		open.Add(1)
		go func() {
			defer open.Done()
			defer func() { <-pulls }()
			got := 0
			for msg := range batch.Messages() {
				got++
				p.jobs.Add(1)
				go func() {
					defer p.jobs.Done()
					tail := p.process(ctx, msg)
					<-slots
					if tail != nil {
						tail()
					}
				}()
			}
			release(n - got)
			if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
				p.log.Warn().Err(err).Msg("pull ended with an error")
				_ = wait.Sleep(ctx, time.Second)
			}
		}()
	}
}

func (p *Pool) activeCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.active)
}

func (p *Pool) track(j *job) {
	p.mu.Lock()
	p.active[j] = struct{}{}
	p.mu.Unlock()
}

func (p *Pool) untrack(j *job) {
	p.mu.Lock()
	delete(p.active, j)
	p.mu.Unlock()
}

// abandonAll hands back the messages of handlers that did not return within the stop
// timeout, and stops renewing their leases (which then expire: the handler may still
// be touching the slot, so the lease is not deleted).
func (p *Pool) abandonAll() {
	p.mu.Lock()
	jobs := make([]*job, 0, len(p.active))
	for j := range p.active {
		jobs = append(jobs, j)
	}
	p.mu.Unlock()
	for _, j := range jobs {
		j.abandon()
		j.log.Error().Msg("handler did not return after cancel: message handed back, lease left to expire")
	}
}
