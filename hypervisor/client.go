package hypervisor

import (
	"context"
	"crypto/sha1" //nolint:gosec // ESX thumbprints are SHA-1 by tradition; SHA-256 is accepted too
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/session/keepalive"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// ESX is a client of one standalone ESX host. It is safe for concurrent use; one ESX
// per host should be shared by all jobs of a process (see Pool), so that its
// concurrency limit holds for the process.
//
// It logs in lazily on first use, logs in again when the host reports the session
// lost (NotAuthenticated), keeps the session alive while idle, bounds every call with
// a timeout, limits concurrent calls, and retries transient faults with backoff.
type ESX struct {
	cfg HostConfig
	url *url.URL
	log zerolog.Logger
	sem chan struct{}
	obs CallObserver // nil: none

	mu   sync.Mutex
	sess *hostSession

	locksMu sync.Mutex
	locks   map[string]chan struct{}
}

// hostSession is one login and what was looked up with it.
type hostSession struct {
	vc   *vim25.Client
	keep *keepalive.HandlerSOAP
	inv  *inventory
}

// inventory holds the host's fixed objects.
type inventory struct {
	dc     *object.Datacenter
	folder *object.Folder
	pool   *object.ResourcePool
	host   *object.HostSystem
	finder *find.Finder

	mu  sync.Mutex
	dss map[string]datastoreRefs
	// dsUUIDs maps the datastore UUIDs vmprofiles named to the datastores' names.
	dsUUIDs map[string]string
	nets    map[string]types.BaseVirtualDeviceBackingInfo
}

// datastoreRefs are a datastore and its browser, looked up once per login.
type datastoreRefs struct {
	ds      *object.Datastore
	browser *object.HostDatastoreBrowser
}

// Option configures New and NewPool.
type Option func(*options)

type options struct {
	log zerolog.Logger
	obs CallObserver
}

// WithLogger sets the logger (default: zerolog.Nop()).
func WithLogger(l zerolog.Logger) Option { return func(o *options) { o.log = l } }

// CallObserver is told of every host call (each with its retries), for metrics.
type CallObserver interface {
	// HostCallStarted is called when a call to the named host (HostConfig.Name)
	// begins; done is called with its error when it ends.
	HostCallStarted(host string) (done func(err error))
}

// WithObserver sets an observer of host calls (default: none).
func WithObserver(obs CallObserver) Option { return func(o *options) { o.obs = obs } }

// New returns a client of the host. It does not connect: the first call logs in.
func New(cfg HostConfig, opts ...Option) (*ESX, error) {
	o := options{log: zerolog.Nop()}
	for _, f := range opts {
		f(&o)
	}
	cfg, u, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &ESX{
		cfg:   cfg,
		url:   u,
		log:   o.log.With().Str("host", cfg.Name).Logger(),
		sem:   make(chan struct{}, cfg.MaxConcurrent),
		obs:   o.obs,
		locks: map[string]chan struct{}{},
	}, nil
}

// Name is the host's name as configured.
func (c *ESX) Name() string { return c.cfg.Name }

// Close logs out (bounded by ctx) and stops the keepalive.
func (c *ESX) Close(ctx context.Context) error {
	c.mu.Lock()
	s := c.sess
	c.sess = nil
	c.mu.Unlock()
	if s == nil {
		return nil
	}
	s.keep.Stop()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	return session.NewManager(s.vc).Logout(ctx)
}

// Ping logs in if needed and checks that the session works.
func (c *ESX) Ping(ctx context.Context) error {
	return c.do(ctx, "Ping", "", c.cfg.CallTimeout, func(ctx context.Context, s *hostSession) error {
		_, err := session.NewManager(s.vc).UserSession(ctx)
		return err
	})
}

// Pool holds one ESX per configured host.
type Pool struct {
	hosts map[string]*ESX
}

// NewPool builds a client for each host config; names must be unique.
func NewPool(cfgs []HostConfig, opts ...Option) (*Pool, error) {
	p := &Pool{hosts: map[string]*ESX{}}
	for _, cfg := range cfgs {
		c, err := New(cfg, opts...)
		if err != nil {
			return nil, err
		}
		if _, dup := p.hosts[c.Name()]; dup {
			return nil, fmt.Errorf("%w: host %s configured twice", ErrInvalid, c.Name())
		}
		p.hosts[c.Name()] = c
	}
	return p, nil
}

// Host returns the client of the named host, or an error wrapping ErrNotFound.
func (p *Pool) Host(name string) (*ESX, error) {
	c, ok := p.hosts[name]
	if !ok {
		return nil, fmt.Errorf("host %s: %w: not configured", name, ErrNotFound)
	}
	return c, nil
}

// Names lists the configured hosts, sorted.
func (p *Pool) Names() []string {
	n := make([]string, 0, len(p.hosts))
	for k := range p.hosts {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Close closes every client.
func (p *Pool) Close(ctx context.Context) error {
	var errs []error
	for _, c := range p.hosts {
		errs = append(errs, c.Close(ctx))
	}
	return errors.Join(errs...)
}

// session returns the current login, logging in if there is none.
func (c *ESX) session(ctx context.Context) (*hostSession, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess != nil {
		return c.sess, nil
	}
	s, err := c.login(ctx)
	if err != nil {
		return nil, err
	}
	c.sess = s
	return s, nil
}

// dropSession forgets s (if it is still current), so the next call logs in again.
func (c *ESX) dropSession(s *hostSession) {
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
	}
	c.mu.Unlock()
	go s.keep.Stop()
}

func (c *ESX) login(ctx context.Context) (*hostSession, error) {
	sc := soap.NewClient(c.url, c.cfg.Insecure)
	if !c.cfg.Insecure && c.cfg.Thumbprint != "" {
		tc := sc.DefaultTransport().TLSClientConfig
		tc.InsecureSkipVerify = true //nolint:gosec // verified by VerifyConnection against the pinned thumbprint
		tc.VerifyConnection = verifyThumbprint(c.cfg.Name, c.cfg.Thumbprint)
	}
	vc, err := vim25.NewClient(ctx, &retryTransport{next: sc, c: c})
	if err != nil {
		return nil, err
	}
	s := &hostSession{vc: vc}
	s.keep = keepalive.NewHandlerSOAP(vc.RoundTripper, c.cfg.KeepAlive, func() error {
		kctx, cancel := context.WithTimeout(context.Background(), c.cfg.CallTimeout)
		defer cancel()
		us, err := session.NewManager(vc).UserSession(kctx)
		if err == nil && us == nil {
			err = errNotAuthenticated
		}
		if err != nil {
			c.log.Warn().Err(err).Msg("session keepalive failed; will log in again on next call")
			c.dropSession(s)
		}
		return err
	})
	vc.RoundTripper = s.keep
	pw, err := c.cfg.password()
	if err != nil {
		return nil, err
	}
	if err := session.NewManager(vc).Login(ctx, url.UserPassword(c.cfg.Username, pw)); err != nil {
		return nil, err
	}
	c.log.Debug().Msg("logged in")
	return s, nil
}

func verifyThumbprint(host, want string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%w: host %s presented no certificate", ErrThumbprint, host)
		}
		raw := cs.PeerCertificates[0].Raw
		s1 := sha1.Sum(raw) //nolint:gosec // fingerprint comparison, not a signature
		s256 := sha256.Sum256(raw)
		if got := colonHex(s1[:]); len(want) == len(got) {
			if got == want {
				return nil
			}
			return fmt.Errorf("%w: host %s SHA-1 thumbprint %s does not match the pinned %s", ErrThumbprint, host, got, want)
		}
		if got := colonHex(s256[:]); got != want {
			return fmt.Errorf("%w: host %s SHA-256 thumbprint %s does not match the pinned %s", ErrThumbprint, host, got, want)
		}
		return nil
	}
}

// inventory looks up (once per login) the datacenter, VM folder, resource pool and host.
func (c *ESX) inventory(ctx context.Context, s *hostSession) (*inventory, error) {
	c.mu.Lock()
	inv := s.inv
	c.mu.Unlock()
	if inv != nil {
		return inv, nil
	}
	f := find.NewFinder(s.vc, false)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		return nil, err
	}
	f.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return nil, err
	}
	pool, err := f.DefaultResourcePool(ctx)
	if err != nil {
		return nil, err
	}
	host, err := f.DefaultHostSystem(ctx)
	if err != nil {
		return nil, err
	}
	inv = &inventory{dc: dc, folder: folders.VmFolder, pool: pool, host: host, finder: f, dss: map[string]datastoreRefs{}, dsUUIDs: map[string]string{}, nets: map[string]types.BaseVirtualDeviceBackingInfo{}}
	c.mu.Lock()
	s.inv = inv
	c.mu.Unlock()
	return inv, nil
}

// do runs one host call: it takes a slot of the host's concurrency limit, logs in if
// needed, bounds each attempt by timeout, logs in again after NotAuthenticated, and
// retries transient faults with exponential backoff and jitter up to MaxAttempts.
// Errors are *OpError naming host, slot and op. Cancelling ctx ends it at once.
func (c *ESX) do(ctx context.Context, op, slot string, timeout time.Duration, fn func(context.Context, *hostSession) error) (err error) {
	if c.obs != nil {
		done := c.obs.HostCallStarted(c.cfg.Name)
		defer func() { done(err) }()
	}
	relogins := 0
	for attempt := 1; ; attempt++ {
		// A slot of the host's limit per attempt: not held while backing off.
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			return c.opErr(op, slot, attempt-1, context.Cause(ctx))
		}
		var s *hostSession
		actx, cancel := context.WithTimeout(ctx, timeout)
		s, err = c.session(actx)
		if err == nil {
			err = fn(actx, s)
		}
		cancel()
		<-c.sem
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return c.opErr(op, slot, attempt, context.Cause(ctx))
		}
		kind := classify(err)
		if kind == errNotAuthenticated && s != nil && relogins < 2 {
			relogins++
			c.log.Info().Str("op", op).Msg("session lost; logging in again")
			c.dropSession(s)
			attempt--
			continue
		}
		if n, ok := attemptsOf(err); ok {
			return c.opErr(op, slot, attempt-1+n, err) // the transport retried it already
		}
		if kind != ErrTransient || attempt >= c.cfg.MaxAttempts {
			return c.opErr(op, slot, attempt, err)
		}
		d := c.backoff(attempt)
		c.log.Debug().Str("op", op).Str("slot", slot).Int("attempt", attempt).Dur("retry_in", d).Err(err).Msg("transient fault")
		if err := sleep(ctx, d); err != nil {
			return c.opErr(op, slot, attempt, err)
		}
	}
}

// task runs a call that starts a task and waits for its result. Starting and waiting
// are retried separately, so a lost answer while waiting does not start the task
// twice; a task that itself fails transiently (TaskInProgress) is started again.
func (c *ESX) task(ctx context.Context, op, slot string, start func(context.Context, *hostSession) (*object.Task, error)) (*types.TaskInfo, error) {
	for run := 1; ; run++ {
		var ref types.ManagedObjectReference
		err := c.do(ctx, op, slot, c.cfg.CallTimeout, func(ctx context.Context, s *hostSession) error {
			t, err := start(ctx, s)
			if err == nil {
				ref = t.Reference()
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		var info *types.TaskInfo
		var taskErr error
		err = c.do(ctx, op, slot, c.cfg.TaskTimeout, func(ctx context.Context, s *hostSession) error {
			i, err := waitTask(ctx, s, ref)
			var te task.Error
			if errors.As(err, &te) {
				info, taskErr = i, err
				return nil
			}
			if err == nil {
				info, taskErr = i, nil
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		if taskErr == nil {
			return info, nil
		}
		if classify(taskErr) != ErrTransient || run >= c.cfg.MaxAttempts {
			return nil, c.opErr(op, slot, run, taskErr)
		}
		if err := sleep(ctx, c.backoff(run)); err != nil {
			return nil, c.opErr(op, slot, run, err)
		}
	}
}

// waitTask waits for the task to end. It first polls the task's info a few times
// (after 1, 2, 4, ... 32 ms: most tasks end within that, at one call per poll), then lets the
// property collector push the end (WaitForUpdatesEx), so a long copy is seen at once
// when it ends. A task that failed returns task.Error with its fault.
func waitTask(ctx context.Context, s *hostSession, ref types.ManagedObjectReference) (*types.TaskInfo, error) {
	pc := property.DefaultCollector(s.vc)
	for d := time.Millisecond; d <= 32*time.Millisecond; d *= 2 {
		if err := sleep(ctx, d); err != nil {
			return nil, err
		}
		var t mo.Task
		if err := pc.RetrieveOne(ctx, ref, []string{"info"}, &t); err != nil {
			return nil, err
		}
		switch t.Info.State {
		case types.TaskInfoStateSuccess:
			return &t.Info, nil
		case types.TaskInfoStateError:
			if t.Info.Error == nil {
				t.Info.Error = &types.LocalizedMethodFault{Fault: &types.SystemError{}, LocalizedMessage: "task failed without a fault"}
			}
			return &t.Info, task.Error{LocalizedMethodFault: t.Info.Error, Description: t.Info.Description}
		}
	}
	return object.NewTask(s.vc, ref).WaitForResult(ctx)
}

func (c *ESX) backoff(attempt int) time.Duration {
	d := c.cfg.Backoff << min(attempt-1, 16)
	if d > c.cfg.BackoffMax || d <= 0 {
		d = c.cfg.BackoffMax
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func (c *ESX) opErr(op, slot string, attempts int, err error) error {
	var oe *OpError
	if errors.As(err, &oe) {
		return err
	}
	kind := classify(err)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || kind == errNotAuthenticated {
		if kind == errNotAuthenticated {
			kind = ErrAuth
		} else {
			kind = err
		}
	}
	return &OpError{Host: c.cfg.Name, Slot: slot, Op: op, Attempts: attempts, Kind: kind, Err: err}
}

// sleep waits d or until ctx ends (returning its cause).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// lockImage takes the per-image lock key of this process, waiting at most until ctx ends.
func (c *ESX) lockImage(ctx context.Context, key string) (unlock func(), err error) {
	c.locksMu.Lock()
	ch, ok := c.locks[key]
	if !ok {
		ch = make(chan struct{}, 1)
		c.locks[key] = ch
	}
	c.locksMu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}
