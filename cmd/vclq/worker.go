package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vclq/vclq/flow"
	"github.com/vclq/vclq/internal/natsconn"
	"github.com/vclq/vclq/internal/simhandler"
	"github.com/vclq/vclq/sharedkeys"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// workerConfig is `vclq worker`'s configuration: a JSON file (--config, $VCLQ_CONFIG),
// then environment variables, then flags, each overriding the one before.
type workerConfig struct {
	NATS              natsconn.Config `json:"nats"`
	ID                string          `json:"id,omitempty"`
	Concurrency       int             `json:"concurrency,omitempty"`
	LeaseTTL          duration        `json:"lease_ttl,omitempty"`
	AckWait           duration        `json:"ack_wait,omitempty"`
	MaxDeliver        int             `json:"max_deliver,omitempty"`
	ShutdownGrace     duration        `json:"shutdown_grace,omitempty"`
	StopTimeout       duration        `json:"stop_timeout,omitempty"`
	BusySlotWait      duration        `json:"busy_slot_wait,omitempty"`
	RetryDelay        duration        `json:"retry_delay,omitempty"`
	HeartbeatInterval duration        `json:"heartbeat_interval,omitempty"`
	// Handler: "flow" (VCL's state flows on ESX hosts and guests, configured by Flow)
	// or "sim:<spec>" (internal/simhandler, for tests and demos).
	// default: "flow" when the file has a flow section; without one the worker does
	// not start unless a "sim:<spec>" handler is given.
	Handler string `json:"handler,omitempty"`
	// Flow configures the real flows: ESX hosts, SSH key, known_hosts, seal key.
	Flow *flow.Setup `json:"flow,omitempty"`
	// Replicas of the streams and buckets `vclq worker` creates at start when they are
	// missing. Existing ones keep theirs (a difference is logged): only
	// `vclq nats init --replicas N` changes them.
	Replicas int `json:"replicas,omitempty"`
	// NoEnsure skips creating missing streams, consumers and buckets at start.
	NoEnsure bool `json:"no_ensure,omitempty"`
	// MetricsAddr serves /metrics, /healthz and /readyz (e.g. "127.0.0.1:9464").
	// default: off.
	MetricsAddr string `json:"metrics_addr,omitempty"`
}

// duration reads "30s" in JSON.
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	*d = duration(v)
	return err
}

func (d duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Defaults of the stream side, so that `vclq worker` ensures what it runs with.
const (
	defaultAckWait    = 60 * time.Second
	defaultMaxDeliver = 5
)

func loadWorkerConfig(args []string) (workerConfig, error) {
	c := workerConfig{AckWait: duration(defaultAckWait), MaxDeliver: defaultMaxDeliver}
	path := os.Getenv("VCLQ_CONFIG")
	for i, a := range args {
		if v, ok := strings.CutPrefix(strings.TrimLeft(a, "-"), "config="); ok && strings.HasPrefix(a, "-") {
			path = v
		} else if (a == "--config" || a == "-config") && i+1 < len(args) {
			path = args[i+1]
		}
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return c, fmt.Errorf("config: %w", err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("config %s: %w", path, err)
		}
	}
	for name, set := range map[string]func(string) error{
		"VCLQ_WORKER_ID":      func(v string) error { c.ID = v; return nil },
		"VCLQ_CONCURRENCY":    func(v string) (err error) { c.Concurrency, err = strconv.Atoi(v); return },
		"VCLQ_LEASE_TTL":      envDuration(&c.LeaseTTL),
		"VCLQ_ACK_WAIT":       envDuration(&c.AckWait),
		"VCLQ_MAX_DELIVER":    func(v string) (err error) { c.MaxDeliver, err = strconv.Atoi(v); return },
		"VCLQ_SHUTDOWN_GRACE": envDuration(&c.ShutdownGrace),
		"VCLQ_HANDLER":        func(v string) error { c.Handler = v; return nil },
		"VCLQ_METRICS_ADDR":   func(v string) error { c.MetricsAddr = v; return nil },
	} {
		if v, ok := os.LookupEnv(name); ok {
			if err := set(v); err != nil {
				return c, fmt.Errorf("$%s: %w", name, err)
			}
		}
	}
	return c, nil
}

// errNoFlow is why a worker without real flow configuration does not start: it
// would otherwise answer real requests with simulated successes.
var errNoFlow = errors.New(`no flow configuration: the configuration file (--config) needs a "flow" section ` +
	`(ESX hosts, SSH key, known_hosts: docs/flows.md), or pass --handler sim:<spec> (e.g. --handler sim:work=100ms..300ms) ` +
	`to run simulated jobs that touch no VM`)

// errNoNATS is why a worker without a server does not start: it takes work from the
// server it reaches, so it has no default.
var errNoNATS = errors.New("no NATS server: pass --nats URL, set $NATS_URL or the configuration file's nats.url")

// resolveHandler fills in the handler when neither the file, $VCLQ_HANDLER nor
// --handler chose one: flow with a flow section. Without one there is no default:
// a simulated handler must be asked for.
func (c *workerConfig) resolveHandler() error {
	if c.Handler == "" && c.Flow != nil {
		c.Handler = "flow"
	}
	if c.Handler == "" || c.Handler == "flow" && c.Flow == nil {
		return errNoFlow
	}
	return nil
}

func envDuration(d *duration) func(string) error {
	return func(v string) error {
		x, err := time.ParseDuration(v)
		*d = duration(x)
		return err
	}
}

func (c *workerConfig) flags(fs *flag.FlagSet) {
	fs.String("config", "", "JSON configuration file ($VCLQ_CONFIG); env and flags override it")
	fileURL := c.NATS.URL
	c.NATS.RegisterFlags(fs)
	// A worker takes work from the server it reaches: no default server.
	nf := fs.Lookup("nats")
	nf.Usage = "NATS server URL(s), comma separated ($NATS_URL, the file's nats.url); required: a worker has no default server"
	if fileURL == "" && os.Getenv("NATS_URL") == "" {
		_ = nf.Value.Set("")
		nf.DefValue = ""
	}
	fs.StringVar(&c.ID, "id", c.ID, "worker id ($VCLQ_WORKER_ID; default <hostname>-<pid>)")
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "job slots ($VCLQ_CONCURRENCY; default 4)")
	fs.DurationVar((*time.Duration)(&c.LeaseTTL), "lease-ttl", time.Duration(c.LeaseTTL), "slot lease TTL, whole seconds ($VCLQ_LEASE_TTL; default 30s)")
	fs.DurationVar((*time.Duration)(&c.AckWait), "ack-wait", time.Duration(c.AckWait), "AckWait of the workers' consumer: used when the worker creates it; an existing consumer's must match, else the worker refuses to start (vclq nats init --ack-wait changes it) ($VCLQ_ACK_WAIT; default 60s)")
	fs.IntVar(&c.MaxDeliver, "max-deliver", c.MaxDeliver, "delivery budget per request (MaxDeliver of the workers' consumer): used when the worker creates it; an existing consumer's must match, else the worker refuses to start (vclq nats init --max-deliver changes it) ($VCLQ_MAX_DELIVER; default 5)")
	fs.DurationVar((*time.Duration)(&c.ShutdownGrace), "shutdown-grace", time.Duration(c.ShutdownGrace), "time in-flight jobs get on SIGTERM ($VCLQ_SHUTDOWN_GRACE; default 30s)")
	fs.DurationVar((*time.Duration)(&c.StopTimeout), "stop-timeout", time.Duration(c.StopTimeout), "time a cancelled handler gets to return (default 10s)")
	fs.DurationVar((*time.Duration)(&c.BusySlotWait), "busy-slot-wait", time.Duration(c.BusySlotWait), "how long a job waits in place for a busy slot (default 10m)")
	fs.DurationVar((*time.Duration)(&c.RetryDelay), "retry-delay", time.Duration(c.RetryDelay), "first retry delay, doubled per delivery (default 5s)")
	fs.DurationVar((*time.Duration)(&c.HeartbeatInterval), "heartbeat", time.Duration(c.HeartbeatInterval), "registry heartbeat interval (default 5s)")
	fs.StringVar(&c.Handler, "handler", c.Handler, "job handler: flow (VCL's flows on ESX; needs the file's flow section) or sim:<spec> (simulated jobs for tests and demos: no VM is touched) ($VCLQ_HANDLER; default: flow when the file has a flow section; without one a sim:<spec> handler must be given)")
	fs.IntVar(&c.Replicas, "replicas", c.Replicas, "replicas of streams and buckets created at start if missing (default 1; existing ones are left as they are: vclq nats init changes them)")
	fs.BoolVar(&c.NoEnsure, "no-ensure", c.NoEnsure, "do not create missing streams, consumers and buckets at start")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "serve /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9464 ($VCLQ_METRICS_ADDR; default off)")
}

// consumerMismatchHelp says which settings of the worker differ from the shared
// consumer's, where they come from, and the two ways out: start the worker with the
// consumer's values, or change the consumer with `vclq nats init` (given the
// consumer's other settings and its stream's replicas, which nats init would
// otherwise reset to its defaults).
func consumerMismatchHelp(mm *worker.ConsumerMismatchError) string {
	var diffs, flags, keys []string
	ackWait, maxDeliver := mm.ConsumerAckWait, strconv.Itoa(mm.ConsumerMaxDeliver)
	for _, m := range mm.Mismatches {
		flag, key, env := "--ack-wait", "ack_wait", "$VCLQ_ACK_WAIT"
		if m.Setting == "max deliver" {
			flag, key, env = "--max-deliver", "max_deliver", "$VCLQ_MAX_DELIVER"
			maxDeliver = m.Worker
		} else {
			ackWait = m.Worker
		}
		diffs = append(diffs, fmt.Sprintf("%s %s (%s, config key %q, %s) does not match consumer %s's %s", m.Setting, m.Worker, flag, key, env, mm.Consumer, m.Consumer))
		flags = append(flags, flag+" "+m.Consumer)
		keys = append(keys, fmt.Sprintf("%q to %s", key, m.Consumer))
	}
	return fmt.Sprintf("%s; every worker shares the consumer, so either\n"+
		"  start this worker with %s (or set %s), or\n"+
		"  change the consumer for every worker: vclq nats init --ack-wait %s --max-deliver %s --replicas %d",
		strings.Join(diffs, "; "), strings.Join(flags, " "), strings.Join(keys, " and "), ackWait, maxDeliver, mm.StreamReplicas)
}

func (c workerConfig) pool() worker.Config {
	return worker.Config{
		ID: c.ID, Version: buildVersion(), Concurrency: c.Concurrency, LeaseTTL: time.Duration(c.LeaseTTL),
		AckWait: time.Duration(c.AckWait), MaxDeliver: c.MaxDeliver, ShutdownGrace: time.Duration(c.ShutdownGrace),
		StopTimeout: time.Duration(c.StopTimeout), BusySlotWait: time.Duration(c.BusySlotWait),
		RetryDelay: time.Duration(c.RetryDelay), HeartbeatInterval: time.Duration(c.HeartbeatInterval),
	}
}

func (c workerConfig) streams() streams.Options {
	return streams.Options{Replicas: c.Replicas, AckWait: time.Duration(c.AckWait), MaxDeliver: c.MaxDeliver}
}

func newSimHandler(spec string) (worker.Handler, error) {
	if s, ok := strings.CutPrefix(spec, "sim:"); ok {
		return simhandler.New(s)
	}
	if spec == "sim" {
		return simhandler.New("")
	}
	return nil, fmt.Errorf("unknown handler %q (want flow or sim:<spec>)", spec)
}

func runWorker(ctx context.Context, e *env, args []string) int {
	c, err := loadWorkerConfig(args)
	if err != nil {
		fmt.Fprintln(e.stderr, "vclq worker:", err)
		return exitUsage
	}
	fs := flagSet(e, "worker", "[--config FILE] [flags]")
	c.flags(fs)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "vclq worker: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	// Everything that makes a worker refuse to start is checked before it connects:
	// a simulated handler is built now, the flow handler after, with the shared host
	// key store.
	if err := c.resolveHandler(); err != nil {
		fmt.Fprintln(e.stderr, "vclq worker:", err)
		return exitUsage
	}
	var h worker.Handler
	closeHosts := func(context.Context) {}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		closeHosts(cctx)
		cancel()
	}()
	if c.Handler != "flow" {
		if h, err = newSimHandler(c.Handler); err != nil {
			fmt.Fprintln(e.stderr, "vclq worker:", err)
			return exitUsage
		}
	}
	if c.NATS.URL == "" {
		fmt.Fprintln(e.stderr, "vclq worker:", errNoNATS)
		return exitUsage
	}
	if c.Handler != "flow" {
		e.log.Warn().Str("handler", c.Handler).Msg("worker: simulated handler: requests get simulated results and no VM is touched (every job's loadlog says so); never point this worker at a real site")
	}
	tel := newTelemetry(c.MetricsAddr, e.log)
	wm, err := tel.worker()
	if err == nil {
		err = tel.start(ctx)
	}
	if err != nil {
		fmt.Fprintln(e.stderr, "vclq worker:", err)
		return exitFailure
	}
	defer tel.close()
	if c.NATS.Name == "" {
		c.NATS.Name = "vclq-worker"
	}
	nc, js, err := natsconn.Connect(c.NATS, e.log)
	if err != nil {
		e.log.Error().Err(err).Msg("worker: connect")
		return exitFailure
	}
	defer nc.Close()
	e.log.Info().Str("nats", nc.ConnectedUrlRedacted()).Str("handler", c.Handler).Msg("worker: connected")
	if !c.NoEnsure {
		ectx, cancel := context.WithTimeout(ctx, streams.EnsureTimeout)
		err := convergeStreams(ectx, js, c.streams(), e.log)
		cancel()
		if err != nil {
			e.log.Error().Err(err).Msg("worker: ensure streams")
			return exitFailure
		}
	}
	if c.Handler == "flow" {
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		store, err := sharedkeys.Open(octx, js, c.ID)
		cancel()
		if err != nil {
			e.log.Warn().Err(err).Msg("worker: SSH host keys are not shared with other nodes (run vclq nats init)")
		} else {
			c.Flow.HostKeyStore = store
		}
		if wm != nil {
			c.Flow.HostObserver = wm
		}
		if h, closeHosts, err = c.Flow.Build(e.log); err != nil {
			fmt.Fprintln(e.stderr, "vclq worker:", err)
			return exitUsage
		}
	}
	pc := c.pool()
	pc.Metrics = wm
	p, err := worker.New(js, nc, h, pc, e.log)
	if err != nil {
		fmt.Fprintln(e.stderr, "vclq worker:", err)
		return exitUsage
	}
	tel.setChecks(p.HealthChecks())
	p.Publisher().WatchAsyncErrors(nc)
	if err := p.Run(ctx); err != nil {
		e.log.Error().Err(err).Msg("worker")
		var mm *worker.ConsumerMismatchError
		if errors.As(err, &mm) {
			fmt.Fprintln(e.stderr, "vclq worker:", consumerMismatchHelp(mm))
		}
		if errors.Is(err, worker.ErrConfig) {
			return exitUsage
		}
		return exitFailure
	}
	return exitOK
}
