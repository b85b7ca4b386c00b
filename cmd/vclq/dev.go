package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/nacl/box"

	"github.com/vclq/vclq/flow"
	"github.com/vclq/vclq/internal/demo"
	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/internal/natsconn"
	"github.com/vclq/vclq/internal/natsembed"
	"github.com/vclq/vclq/sharedkeys"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// devEnv is everything `vclq dev` runs in one process.
type devEnv struct {
	opts   devOptions
	server *natsembed.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	lab    *devlab.Lab
	e      *env
	// info receives the human lines (URLs, slots, demo progress): stdout, or stderr
	// with --json, whose stdout carries JSON objects only.
	info io.Writer
}

type devOptions struct {
	listen      string
	dir         string
	hosts       int
	slots       int
	guests      string
	concurrency int
	workers     int
	noDemo      bool
	siteFile    string
	sealKey     string
	once        bool
	requests    int
	json        bool
	timeout     time.Duration
}

// devStarters run in order; each may add a background task to wg.
var devStarters = []struct {
	name  string
	start func(ctx context.Context, d *devEnv, wg *sync.WaitGroup) error
}{
	{"nats", startDevNATS},
	{"site", startDevSite},
	{"workers", startDevWorkers},
	{"site file", writeDevSiteFile},
}

// check refuses combinations that could not do what they say.
func (o devOptions) check() error {
	switch {
	case o.workers < 0:
		return fmt.Errorf("--workers %d: want 0 or more", o.workers)
	case o.workers == 0 && !o.noDemo:
		return errors.New("--workers 0 runs no worker to serve the demo: add --no-demo")
	case o.noDemo && o.requests > 0:
		return errors.New("--requests runs reservations: it cannot go with --no-demo")
	}
	return nil
}

func runDev(ctx context.Context, e *env, args []string) int {
	var o devOptions
	fs := flagSet(e, "dev", "[flags]")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:0", "client address of the embedded NATS server (HOST:PORT; port 0 picks a free one)")
	fs.StringVar(&o.dir, "dir", "", "state directory: JetStream store, datastores, guest disks, keys (default: a temporary directory, removed on exit)")
	fs.IntVar(&o.hosts, "hosts", 2, "simulated ESX hosts")
	fs.IntVar(&o.slots, "slots", 3, "VM slots per host")
	fs.StringVar(&o.guests, "guests", "auto", "guests: auto (namespace guests when running as root), namespace (required) or none (simulated)")
	fs.IntVar(&o.concurrency, "concurrency", 8, "job slots of each embedded worker")
	fs.IntVar(&o.workers, "workers", 1, "embedded workers; 0 runs none (attach your own `vclq worker`; needs --no-demo)")
	fs.BoolVar(&o.noDemo, "no-demo", false, "skip the demo: keep running until interrupted or, with --once, exit once the site file is written")
	fs.StringVar(&o.siteFile, "site-file", "", "write a JSON description of the site (NATS URL, hosts with URLs, logins, thumbprints, datastores and port groups, images, slots, management key) to this file")
	fs.StringVar(&o.sealKey, "seal-key", "", "bridge public key file (base64 of 32 bytes: the FILE.pub of `vclq bridge --seal-keygen FILE`) the embedded workers seal passwords to (default: a generated key whose private half is discarded)")
	fs.BoolVar(&o.once, "once", false, "run the demo (or --requests new reservations) and exit: non-zero if any reservation failed")
	fs.IntVar(&o.requests, "requests", 0, "with --once: run this many new reservations instead of the demo")
	fs.BoolVar(&o.json, "json", false, "with --once: print a JSON summary on stdout (one object per line) instead of live progress; the URLs and other human lines go to stderr")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "with --once: how long the whole run may take")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "vclq dev: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	if err := o.check(); err != nil {
		fmt.Fprintf(e.stderr, "vclq dev: %v\n", err)
		return exitUsage
	}
	if os.Getenv("VCLQ_LOG_LEVEL") == "" { // the demo's own lines are the show
		e.log = e.log.Level(zerolog.WarnLevel)
	}
	d := &devEnv{opts: o, e: e, info: e.stdout}
	if o.json {
		d.info = e.stderr
	}
	if d.opts.dir != "" {
		abs, err := filepath.Abs(d.opts.dir)
		if err != nil {
			return fail(e, "dev: state directory: %v", err)
		}
		d.opts.dir = abs
	} else {
		dir, err := os.MkdirTemp("", "vclq-dev-")
		if err != nil {
			return fail(e, "dev: state directory: %v", err)
		}
		defer os.RemoveAll(dir)
		d.opts.dir = dir
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	defer func() {
		stop()
		wg.Wait()
		if d.lab != nil {
			d.lab.Close()
		}
		if d.nc != nil {
			d.nc.Close()
		}
		if d.server != nil {
			d.server.Stop()
		}
	}()
	for _, s := range devStarters {
		if err := s.start(runCtx, d, &wg); err != nil {
			return fail(e, "dev: start %s: %v", s.name, err)
		}
	}
	if o.noDemo {
		if o.once {
			return exitOK
		}
		fmt.Fprintf(d.info, "\nvclq dev keeps running without a demo (Ctrl-C stops it).\n")
		<-ctx.Done()
		return exitOK
	}
	if o.once {
		octx, cancel := context.WithTimeout(runCtx, o.timeout)
		defer cancel()
		return runDevOnce(octx, d)
	}
	if _, err := runDevDemo(runCtx, d); err != nil && ctx.Err() == nil {
		e.log.Error().Err(err).Msg("dev: demo")
	}
	// The hints name the binary as it was run (`make run` runs bin/vclq).
	self := os.Args[0]
	fmt.Fprintf(d.info, "\nvclq dev keeps running (Ctrl-C stops it). Try:\n  NATS_URL=%s %s status\n  NATS_URL=%s %s events --follow\n  nats --server %s sub --stream VCL_EVENTS --all 'vcl.events.>'\n",
		d.server.URL(), self, d.server.URL(), self, d.server.URL())
	<-ctx.Done()
	return exitOK
}

func startDevNATS(_ context.Context, d *devEnv, _ *sync.WaitGroup) error {
	host, portS, err := net.SplitHostPort(d.opts.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", d.opts.listen, err)
	}
	port, err := strconv.Atoi(portS)
	if err != nil || port < 0 || port > 65535 {
		return fmt.Errorf("--listen %q: bad port", d.opts.listen)
	}
	d.server, err = natsembed.Start(natsembed.Options{Host: host, Port: port, StoreDir: filepath.Join(d.opts.dir, "jetstream"), ServerName: "vclq-dev"})
	if err != nil {
		return err
	}
	d.nc, d.js, err = natsconn.Connect(natsconn.Config{URL: d.server.URL(), Name: "vclq-dev"}, d.e.log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), streams.EnsureTimeout)
	defer cancel()
	if err := convergeStreams(ctx, d.js, streams.Options{AckWait: 30 * time.Second}, d.e.log); err != nil {
		return err
	}
	fmt.Fprintf(d.info, "NATS_URL=%s\n", d.server.URL())
	return nil
}

// startDevSite starts the simulated ESX hosts (with base images) and the guests.
func startDevSite(ctx context.Context, d *devEnv, _ *sync.WaitGroup) error {
	var err error
	d.lab, err = devlab.Start(ctx, devlab.Config{Hosts: d.opts.hosts, SlotsPerHost: d.opts.slots, Guests: d.opts.guests,
		Dir: filepath.Join(d.opts.dir, "site"), Logger: &d.e.log})
	if err != nil {
		return err
	}
	if err := d.lab.ESX.WriteEnv(d.info); err != nil {
		return err
	}
	if d.lab.Guests != nil {
		fmt.Fprintf(d.info, "GUESTS=namespace: %d real Linux guests (sshd, iptables, useradd) on %s, management node %s\n",
			len(d.lab.Slots), d.lab.Guests.Subnet(), d.lab.ManagementIP)
	} else {
		fmt.Fprintf(d.info, "GUESTS=simulated (%s): guests answer while their VM is on; no sshd, firewall or user accounts are exercised\n", d.lab.GuestsWhy)
	}
	for _, s := range d.lab.Slots {
		fmt.Fprintf(d.info, "  slot %s (computer %d) on %s, private IP %s\n", s.Computer.ShortName, s.Computer.ID, s.Host.Name, s.Computer.PrivateIP)
	}
	return nil
}

// devSealer is what the embedded workers seal passwords to, as in production: the
// bridge's public key from --seal-key, or a generated one nobody can open.
func devSealer(path string) (*flow.Sealer, error) {
	if path != "" {
		s, err := flow.LoadSealer(path)
		if err != nil {
			return nil, fmt.Errorf("--seal-key %s: %w", path, err)
		}
		return s, nil
	}
	pub, _, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return flow.ParseSealer(base64.StdEncoding.EncodeToString(pub[:]))
}

// startDevWorkers starts --workers embedded workers: "dev-worker", "dev-worker-2", ...
func startDevWorkers(ctx context.Context, d *devEnv, wg *sync.WaitGroup) error {
	if d.opts.workers == 0 {
		fmt.Fprintf(d.info, "WORKERS=0: no embedded worker; attach one to %s\n", d.server.URL())
		return nil
	}
	sealer, err := devSealer(d.opts.sealKey)
	if err != nil {
		return err
	}
	for i := 1; i <= d.opts.workers; i++ {
		id := "dev-worker"
		if i > 1 {
			id = fmt.Sprintf("dev-worker-%d", i)
		}
		if err := startDevWorker(ctx, d, wg, id, sealer); err != nil {
			return fmt.Errorf("worker %s: %w", id, err)
		}
	}
	return nil
}

func startDevWorker(ctx context.Context, d *devEnv, wg *sync.WaitGroup, workerID string, sealer *flow.Sealer) error {
	// As a real worker: the host keys it records are shared in vclq_hostkeys.
	kctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	keys, err := sharedkeys.Open(kctx, d.js, workerID)
	cancel()
	if err != nil {
		return fmt.Errorf("open the shared host keys: %w", err)
	}
	h, closeHosts, err := d.lab.SharedHandler(d.e.log, sealer, flow.BootWait{Timeout: 2 * time.Minute, Interval: 250 * time.Millisecond}, keys)
	if err != nil {
		return err
	}
	pool, err := worker.New(d.js, d.nc, h, worker.Config{
		ID: workerID, Version: buildVersion(), Concurrency: d.opts.concurrency, LeaseTTL: 10 * time.Second,
		ShutdownGrace: 5 * time.Second, RetryDelay: time.Second,
	}, d.e.log)
	if err != nil {
		closeHosts(context.Background())
		return err
	}
	pool.Publisher().WatchAsyncErrors(d.nc)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer closeHosts(context.Background())
		if err := pool.Run(ctx); err != nil {
			d.e.log.Error().Err(err).Msg("dev: worker pool")
		}
	}()
	return nil
}

// writeDevSiteFile writes --site-file: what a bridge or a worker run by hand needs
// to attach to this site. Written whole (a temporary file renamed), mode 0600: it
// holds the hosts' logins.
func writeDevSiteFile(ctx context.Context, d *devEnv, _ *sync.WaitGroup) error {
	if d.opts.siteFile == "" {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	site, err := d.lab.Site(sctx, d.server.URL())
	if err != nil {
		return err
	}
	site.Workers = d.opts.workers
	if d.opts.sealKey != "" {
		if site.SealKeyFile, err = filepath.Abs(d.opts.sealKey); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(site, "", "  ")
	if err != nil {
		return err
	}
	tmp := d.opts.siteFile + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, d.opts.siteFile); err != nil {
		return fmt.Errorf("write %s: %w", d.opts.siteFile, err)
	}
	fmt.Fprintf(d.info, "SITE_FILE=%s\n", d.opts.siteFile)
	return nil
}

func (d *devEnv) runner(live bool) *demo.Runner {
	r := &demo.Runner{JS: d.js, NC: d.nc, Lab: d.lab}
	if live {
		r.Out = d.info
	}
	return r
}

// remoteIP is the address demo users connect from: a client namespace of the guest lab
// (or, with simulated guests, an address no packet is ever sent to).
func (d *devEnv) remoteIP(ctx context.Context, name string) string {
	if d.lab.Guests != nil {
		if c, err := d.lab.Guests.NewClient(ctx, name); err == nil {
			return c.IP().String()
		}
	}
	return "198.51.100.250"
}

// runDevDemo runs reservations through their whole life (new → reserved → reclaim) on
// a few slots at once, plus one image capture, with live progress.
func runDevDemo(ctx context.Context, d *devEnv) (demo.Summary, error) {
	r := d.runner(true)
	if err := r.Start(ctx); err != nil {
		return demo.Summary{}, err
	}
	n := min(3, len(d.lab.Slots)-1)
	if n < 1 {
		n = 1
	}
	fmt.Fprintf(d.info, "\ndemo: %d reservations through new → reserved → reclaim, and an image capture\n", n)
	start := time.Now()
	outcomes, err := demo.Parallel(n+1, func(i int) ([]demo.Outcome, error) {
		if i == n && len(d.lab.Slots) > n {
			return r.Capture(ctx, d.lab.Slots[n], d.lab.Images[0])
		}
		if i == n {
			return nil, nil
		}
		return r.Lifecycle(ctx, d.lab.Slots[i], d.lab.Images[i%len(d.lab.Images)], d.remoteIP(ctx, fmt.Sprintf("user%d", i)))
	})
	s := demo.Summarize(outcomes, time.Since(start))
	fmt.Fprintf(d.info, "demo: %d requests, %d succeeded, %d failed in %.1fs\n", s.Requests, s.Succeeded, s.Failed, s.Seconds)
	return s, err
}

// runDevOnce runs the demo, or --requests new reservations spread over the slots, and
// exits non-zero if any failed.
func runDevOnce(ctx context.Context, d *devEnv) int {
	if d.opts.requests <= 0 {
		s, err := runDevDemo(ctx, d)
		if d.opts.json {
			printJSON(d.e.stdout, s)
		}
		if err != nil {
			return fail(d.e, "dev: %v", err)
		}
		if s.Failed > 0 {
			return exitFailure
		}
		return exitOK
	}
	r := d.runner(!d.opts.json) // --json: no live progress, on either stream
	if err := r.Start(ctx); err != nil {
		return fail(d.e, "dev: %v", err)
	}
	start := time.Now()
	slots := len(d.lab.Slots)
	outcomes, err := demo.Parallel(min(slots, d.opts.requests), func(i int) ([]demo.Outcome, error) {
		var out []demo.Outcome
		for k := i; k < d.opts.requests; k += slots { // one slot's requests run in turn
			o, err := r.Do(ctx, d.lab.Request(devlab.RequestSpec{Kind: "new", Slot: d.lab.Slots[i],
				Image: d.lab.Images[k%len(d.lab.Images)], Reservation: r.NextReservation(), Request: int64(k + 1)}))
			out = append(out, o)
			if err != nil {
				return out, err
			}
		}
		return out, nil
	})
	s := demo.Summarize(outcomes, time.Since(start))
	if d.opts.json {
		printJSON(d.e.stdout, s)
	} else {
		fmt.Fprintf(d.e.stdout, "%d of %d reservations succeeded in %.1fs\n", s.Succeeded, s.Requests, s.Seconds)
	}
	if err != nil {
		d.e.log.Error().Err(err).Msg("dev: run")
		return exitFailure
	}
	if s.Failed > 0 || s.Succeeded != d.opts.requests {
		return exitFailure
	}
	return exitOK
}
