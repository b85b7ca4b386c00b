// Package e2e runs the reservation state flows end to end through the real parts:
// an embedded nats-server, the worker pool, simulated ESX hosts (vcsim) checked
// through govmomi, and namespace guests checked from inside.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/flow"
	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/internal/guestlab"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// site is a running simulated VCL site with workers.
type site struct {
	lab *devlab.Lab
	js  *testutil.JetStream
	log zerolog.Logger
}

// requireGuests skips (or, in CI, fails) when namespace guests cannot run here.
func requireGuests(t *testing.T) {
	t.Helper()
	if err := guestlab.Check(); err != nil {
		if os.Getenv("CI") != "" || os.Getenv("VCLQ_REQUIRE_GUESTLAB") != "" {
			t.Fatalf("namespace guests required in CI: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
}

func startSite(t *testing.T, hosts, slotsPerHost int) *site {
	t.Helper()
	requireGuests(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	lab, err := devlab.Start(ctx, devlab.Config{Hosts: hosts, SlotsPerHost: slotsPerHost, Guests: "namespace", Dir: t.TempDir(), Logger: &log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	// Lease and ack timings leave room for seconds-long stalls of a loaded machine.
	js := testutil.StartVCLJetStream(t, streams.Options{AckWait: 10 * time.Second, MaxDeliver: 3})
	return &site{lab: lab, js: js, log: log}
}

// startWorker runs a worker pool with the flow handler until the test ends.
func (s *site) startWorker(t *testing.T, id string, concurrency int) {
	t.Helper()
	h, closeHosts, err := s.lab.Handler(s.log, nil, flow.BootWait{Timeout: time.Minute, Interval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.js.URL)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := testutilJS(nc)
	p, err := worker.New(js, nc, h, worker.Config{ID: id, Concurrency: concurrency, LeaseTTL: 5 * time.Second, ShutdownGrace: time.Second, RetryDelay: 500 * time.Millisecond}, s.log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("worker did not stop within 30s")
		}
		closeHosts(context.Background())
		nc.Close()
	})
}

// submit publishes a request and returns its stream sequence.
func (s *site) submit(t *testing.T, r *messages.Request) uint64 {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := messages.DecodeRequest(b); err != nil {
		t.Fatalf("test built an invalid request: %v", err)
	}
	return s.publish(t, r.Kind.Subject(), b, r.MsgID())
}

func (s *site) publish(t *testing.T, subject string, data []byte, msgID string) uint64 {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(messages.HeaderMsgID, msgID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := s.js.JS.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// result waits (bounded) for the result of the request published as seq.
func (s *site) result(t *testing.T, reservation int64, seq uint64, timeout time.Duration) *messages.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var got *messages.Result
	err := eventlog.Read(ctx, s.js.JS, eventlog.Filter{Reservation: reservation, Type: "result", Follow: true}, func(ev eventlog.Event) error {
		if ev.Result != nil && ev.Result.RequestSeq == seq {
			got = ev.Result
			return eventlog.ErrStop
		}
		return nil
	})
	if got == nil {
		t.Fatalf("no result for reservation %d request seq %d within %s (%v)\nevents:\n%s", reservation, seq, timeout, err, s.dump(reservation))
	}
	return got
}

// steps lists the loadlog rows of one request (begin and info events), as the bridge
// writes them.
func (s *site) steps(t *testing.T, reservation int64, seq uint64) string {
	t.Helper()
	var names []string
	s.each(t, reservation, func(l *messages.Loadlog) {
		if l.RequestSeq == seq && (l.Phase == messages.PhaseBegin || l.Phase == messages.PhaseInfo) {
			names = append(names, l.Name)
		}
	})
	return strings.Join(names, ",")
}

func (s *site) each(t *testing.T, reservation int64, fn func(*messages.Loadlog)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := eventlog.Read(ctx, s.js.JS, eventlog.Filter{Reservation: reservation, Type: "loadlog"}, func(ev eventlog.Event) error {
		if ev.Loadlog != nil {
			fn(ev.Loadlog)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (s *site) dump(reservation int64) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	_ = eventlog.Read(ctx, s.js.JS, eventlog.Filter{Reservation: reservation}, func(ev eventlog.Event) error {
		j, _ := json.Marshal(ev)
		b.Write(j)
		b.WriteString("\n")
		return nil
	})
	return b.String()
}

// vm is a VM as govmomi's property collector shows it.
type vm struct {
	Name  string
	Power types.VirtualMachinePowerState
	Extra map[string]string
	MACs  []string
	Nets  int
	CPUs  int32
	MemMB int32
}

// hostVMs lists every VM on a host through govmomi (not through vclq's code).
func hostVMs(t *testing.T, h *esxsim.Host) []vm {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := h.Observer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := view.NewManager(c).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = v.Destroy(ctx) }()
	var mos []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name", "runtime.powerState", "config"}, &mos); err != nil {
		t.Fatal(err)
	}
	_ = property.DefaultCollector(c)
	var out []vm
	for _, m := range mos {
		x := vm{Name: m.Name, Power: m.Runtime.PowerState, Extra: map[string]string{}}
		if m.Config != nil {
			x.CPUs, x.MemMB = m.Config.Hardware.NumCPU, m.Config.Hardware.MemoryMB
			for _, o := range m.Config.ExtraConfig {
				if kv := o.GetOptionValue(); kv != nil {
					x.Extra[kv.Key] = fmt.Sprint(kv.Value)
				}
			}
			for _, d := range m.Config.Hardware.Device {
				if n, ok := d.(types.BaseVirtualEthernetCard); ok {
					x.MACs = append(x.MACs, n.GetVirtualEthernetCard().MacAddress)
					x.Nets++
				}
			}
		}
		out = append(out, x)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// slotVMs are a slot's VMs on its host.
func slotVMs(t *testing.T, s *devlab.Slot) []vm {
	t.Helper()
	var out []vm
	for _, v := range hostVMs(t, s.Host) {
		if strings.HasPrefix(v.Name, s.Computer.ShortName+"_") {
			out = append(out, v)
		}
	}
	return out
}

// inGuest runs a command inside the slot's guest and returns its output.
func inGuest(t *testing.T, s *devlab.Slot, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := s.Guest.Exec(ctx, nil, args...)
	return string(out), err
}

// userKey writes an ed25519 key pair for a reservation user and returns the private
// key file and the public key line.
func userKey(t *testing.T, dir string) (string, string) {
	t.Helper()
	p := filepath.Join(dir, "user_ed25519")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := runCmd(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@example", "-f", p); err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(p + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return p, strings.TrimSpace(string(pub))
}
