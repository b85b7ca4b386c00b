// Package devlab assembles a whole simulated VCL site for tests, benchmarks and
// `vclq dev`: simulated ESX hosts (internal/esxsim) with seeded base images, VM slots
// spread over them, a management-node SSH key, and — when the machine allows
// (root, iproute2, sshd, iptables) — a real Linux guest per slot (internal/guestlab)
// that boots when the slot's VM powers on and is re-imaged when the VM is removed,
// exactly as a VMware guest follows its VM.
package devlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/internal/guestlab"
	"github.com/vclq/vclq/messages"
)

// ImageSpec is a base image seeded on every host.
type ImageSpec struct {
	ID         int64
	Name       string // imagerevision.imagename
	RevisionID int64
	Revision   int
	OSType     string // default linux
	SizeBytes  int64  // flat file size; default 4 MiB
}

// Config of a lab. The zero value gives 1 host, 2 slots, 1 image, guests if possible.
type Config struct {
	Hosts        int // default 1
	SlotsPerHost int // default 2
	Images       []ImageSpec
	// Guests: "auto" (namespace guests when the machine allows), "namespace"
	// (required: fail otherwise) or "none".
	Guests string
	// Subnet of the guest lab (default: guestlab picks a free /27; give a bigger one
	// for more than ~28 slots, inside 192.0.2.0/24 or 198.51.100.0/24).
	Subnet netip.Prefix
	// Dir holds datastores, guest disks and keys. Required.
	Dir    string
	Logger *zerolog.Logger
}

// DefaultImages is what a lab seeds when Config.Images is empty.
var DefaultImages = []ImageSpec{
	{ID: 12, Name: "vmwarelinux-centos7-v3", RevisionID: 44, Revision: 3, OSType: messages.OSLinux},
	{ID: 15, Name: "vmwarelinux-ubuntu22-v1", RevisionID: 51, Revision: 1, OSType: messages.OSLinux},
}

// Lab is a running simulated site.
type Lab struct {
	ESX    *esxsim.Lab
	Guests *guestlab.Lab // nil without namespace guests
	// GuestsWhy says why there are no namespace guests ("" when there are).
	GuestsWhy string
	Slots     []*Slot
	Images    []ImageSpec
	// KeyFile is the management node's SSH private key; KnownHosts its known_hosts.
	KeyFile, KnownHosts string
	// ManagementIP is the address guests see the management node at.
	ManagementIP string

	log     zerolog.Logger
	cancel  context.CancelFunc
	watchWG sync.WaitGroup
	bySlot  map[string]*Slot

	simOnce sync.Once
	sims    map[string]*simGuest // without namespace guests: made by the first Handler
}

// Slot is one VM computer: its host, its VCL computer row and its guest.
type Slot struct {
	Host     *esxsim.Host
	HostID   int64
	Computer messages.Computer
	Guest    *guestlab.Guest // nil without namespace guests
	events   chan esxsim.PowerEvent
	downs    chan powerDown
}

// powerDown is a call stopping one of the slot's VMs, held until the slot's guest
// has followed it (done closed).
type powerDown struct {
	esxsim.PowerDown
	done chan struct{}
}

// followTimeout bounds how long a power-down call waits for its guest to stop.
const followTimeout = 30 * time.Second

// Datastore is where every host keeps images and VMs.
const Datastore = esxsim.DefaultDatastore

// Start builds the lab. Close it when done.
func Start(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Dir == "" {
		return nil, errors.New("devlab: Dir is required")
	}
	if cfg.Hosts <= 0 {
		cfg.Hosts = 1
	}
	if cfg.SlotsPerHost <= 0 {
		cfg.SlotsPerHost = 2
	}
	if len(cfg.Images) == 0 {
		cfg.Images = DefaultImages
	}
	if cfg.Guests == "" {
		cfg.Guests = "auto"
	}
	l := &Lab{Images: cfg.Images, log: zerolog.Nop(), bySlot: map[string]*Slot{}}
	if cfg.Logger != nil {
		l.log = *cfg.Logger
	}
	var err error
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("devlab: %w", err)
	}
	l.KeyFile = filepath.Join(cfg.Dir, "mn_ed25519")
	pub, err := guestlab.WriteSSHKey(l.KeyFile, "vclq management node")
	if err != nil {
		return nil, fmt.Errorf("devlab: key: %w", err)
	}
	l.KnownHosts = filepath.Join(cfg.Dir, "known_hosts")

	// Each host is polled for power changes (two SOAP calls a poll): keep the total
	// near 40 polls a second however many hosts there are.
	watch := max(esxsim.DefaultWatchInterval, time.Duration(cfg.Hosts)*25*time.Millisecond)
	l.ESX, err = esxsim.Start(ctx, esxsim.Options{Hosts: cfg.Hosts, Dir: filepath.Join(cfg.Dir, "esx"), WatchInterval: watch, Logger: &l.log})
	if err != nil {
		return nil, fmt.Errorf("devlab: %w", err)
	}
	for _, h := range l.ESX.Hosts {
		for _, im := range cfg.Images {
			size := im.SizeBytes
			if size <= 0 {
				size = 4 << 20
			}
			if _, err := h.SeedImage(Datastore, "", im.Name, size); err != nil {
				l.Close()
				return nil, fmt.Errorf("devlab: seed %s on %s: %w", im.Name, h.Name, err)
			}
		}
	}

	switch cfg.Guests {
	case "none":
		l.GuestsWhy = "guests disabled"
	case "auto", "namespace":
		if err := guestlab.Check(); err != nil {
			if cfg.Guests == "namespace" {
				l.Close()
				return nil, fmt.Errorf("devlab: namespace guests: %w", err)
			}
			l.GuestsWhy = err.Error()
			break
		}
		l.Guests, err = guestlab.New(ctx, guestlab.Config{Subnet: cfg.Subnet, Dir: filepath.Join(cfg.Dir, "guests"), AuthorizedKeys: []string{pub}, Logger: cfg.Logger})
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("devlab: guest lab: %w", err)
		}
		l.ManagementIP = l.Guests.HostIP().String()
	default:
		l.Close()
		return nil, fmt.Errorf("devlab: Guests %q is not auto, namespace or none", cfg.Guests)
	}
	if l.ManagementIP == "" {
		l.ManagementIP = "198.51.100.1"
	}

	n := 0
	for hi, h := range l.ESX.Hosts {
		for s := 0; s < cfg.SlotsPerHost; s++ {
			n++
			short := fmt.Sprintf("vm%03d", n)
			c := messages.Computer{
				ID: int64(100 + n), Hostname: short + ".vcl.example.edu", ShortName: short,
				PrivateIP: fmt.Sprintf("198.51.100.%d", 100+n%150), Eth0MAC: fmt.Sprintf("00:50:56:00:%02x:%02x", n/256, n%256),
				Eth1MAC: fmt.Sprintf("00:50:56:01:%02x:%02x", n/256, n%256), RAMMB: 1024, CPUs: 1,
			}
			slot := &Slot{Host: h, HostID: int64(hi + 1), Computer: c, events: make(chan esxsim.PowerEvent, 64), downs: make(chan powerDown)}
			if l.Guests != nil {
				g, err := l.Guests.NewGuest(ctx, short)
				if err != nil {
					l.Close()
					return nil, fmt.Errorf("devlab: guest %s: %w", short, err)
				}
				slot.Guest = g
				slot.Computer.PrivateIP = g.IP().String()
			}
			l.Slots = append(l.Slots, slot)
			l.bySlot[short] = slot
		}
	}

	if l.Guests != nil {
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		l.cancel = cancel
		for _, s := range l.Slots {
			l.watchWG.Add(1)
			go l.follow(wctx, s)
		}
		l.ESX.OnPowerDown(func(p esxsim.PowerDown) { l.routeDown(wctx, p) })
		l.watchWG.Add(1)
		go func() {
			defer l.watchWG.Done()
			if err := l.ESX.WatchPower(wctx, l.route); err != nil && wctx.Err() == nil {
				l.log.Error().Err(err).Msg("devlab: power watch ended")
			}
		}()
	}
	return l, nil
}

var vmNameRe = regexp.MustCompile(`^([A-Za-z0-9-]+)_\d+-v\d+$`)

// route hands a power event to its slot's follower (never blocks the watcher for
// long: a slot's queue holds 64 events).
func (l *Lab) route(e esxsim.PowerEvent) {
	s, ok := l.slotOf(e.Host, e.Name)
	if !ok {
		return
	}
	select {
	case s.events <- e:
	case <-time.After(5 * time.Second):
		l.log.Error().Str("slot", s.Computer.ShortName).Msg("devlab: guest follower stuck; power event dropped")
	}
}

// slotOf is the slot a VM of host belongs to, by VCL's VM naming.
func (l *Lab) slotOf(host, vmName string) (*Slot, bool) {
	m := vmNameRe.FindStringSubmatch(vmName)
	if m == nil {
		return nil, false
	}
	s, ok := l.bySlot[m[1]]
	if !ok || s.Host.Name != host {
		return nil, false
	}
	return s, true
}

// routeDown runs inside a host's PowerOff, Reset, Unregister or Destroy call, before
// the host carries it out: the slot's follower stops the guest, and the call goes on
// once it has (bounded by followTimeout). So when a load's startload has removed the
// old VM, the old guest cannot answer the new VM's machinebooted probe. Calls of the
// observer login are devlab's own (after a guest halted itself) and pass.
func (l *Lab) routeDown(ctx context.Context, p esxsim.PowerDown) {
	s, ok := l.slotOf(p.Host, p.Name)
	if !ok || p.Observer {
		return
	}
	d := powerDown{PowerDown: p, done: make(chan struct{})}
	timeout := time.NewTimer(followTimeout)
	defer timeout.Stop()
	select {
	case s.downs <- d:
	case <-ctx.Done():
		return
	case <-timeout.C:
		l.log.Error().Str("slot", s.Computer.ShortName).Str("vm", p.Name).Str("call", p.Method).Msg("devlab: guest follower busy; the VM stops without its guest")
		return
	}
	select {
	case <-d.done:
	case <-ctx.Done():
	case <-timeout.C:
		l.log.Error().Str("slot", s.Computer.ShortName).Str("vm", p.Name).Str("call", p.Method).Msg("devlab: guest did not stop in time")
	}
}

// follow makes a slot's guest follow its VM: boot on power-on with the image in the
// VM's metadata, stop on power-off, re-image when the VM is removed; and the VM follow
// its guest: a guest that halts itself (shutdown inside it) powers its VM off, as on
// ESX.
func (l *Lab) follow(ctx context.Context, s *Slot) {
	defer l.watchWG.Done()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	// The VM (managed object id, and name) whose guest is running. Events are tied to
	// it: one poll of the watcher can report a slot's new VM powered on before the old
	// one's removal, and a reload with the same image reuses the VM name.
	var runningVM, runningName string
	// VMs the host stopped while the guest followed them (routeDown): a power-on
	// event for one of them may be older than the stop, and is checked first.
	downed := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-s.downs:
			if runningVM == "" || runningVM == d.VM {
				var err error
				switch {
				case d.Reset():
					// A hard reboot: the same disk boots again; the VM stays on.
					if runningVM == d.VM {
						if err = s.Guest.Stop(); err == nil {
							bctx, cancel := context.WithTimeout(ctx, followTimeout)
							err = s.Guest.Boot(bctx, s.Guest.Image())
							cancel()
						}
						if err != nil {
							runningVM, runningName = "", ""
						}
					}
				case d.Removed():
					runningVM, runningName = "", ""
					downed[d.VM] = true
					err = s.Guest.Reimage()
				default:
					runningVM, runningName = "", ""
					downed[d.VM] = true
					err = s.Guest.Stop()
				}
				if err != nil {
					l.log.Warn().Err(err).Str("slot", s.Computer.ShortName).Str("vm", d.Name).Str("call", d.Method).Msg("devlab: guest did not follow its VM")
				}
			}
			close(d.done)
		case <-tick.C:
			if runningVM != "" && !s.Guest.Running() {
				vmName := runningName
				runningVM, runningName = "", ""
				if err := l.powerOff(ctx, s.Host, vmName); err != nil {
					l.log.Warn().Err(err).Str("vm", vmName).Msg("devlab: power off after guest halt")
				}
			}
		case e := <-s.events:
			log := l.log.With().Str("slot", s.Computer.ShortName).Str("vm", e.Name).Logger()
			mine := runningVM == "" || runningVM == e.VM
			switch {
			case e.Removed:
				delete(downed, e.VM)
				if mine {
					runningVM, runningName = "", ""
					if err := s.Guest.Reimage(); err != nil {
						log.Warn().Err(err).Msg("devlab: re-image guest")
					}
				}
			case e.PoweredOn():
				if runningVM == e.VM && s.Guest.Running() {
					continue
				}
				if downed[e.VM] {
					// Reported on before the host stopped it? Ask the host.
					if on, err := l.poweredOn(ctx, s.Host, e.Name); err != nil || !on {
						continue
					}
					delete(downed, e.VM)
				}
				if s.Guest.Running() {
					// Still the previous VM's guest: that VM is gone.
					if err := s.Guest.Reimage(); err != nil {
						log.Warn().Err(err).Msg("devlab: re-image guest")
					}
				}
				img := imageInfo(e.ExtraConfig, s.Computer)
				bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				if err := s.Guest.Boot(bctx, img); err != nil {
					log.Warn().Err(err).Msg("devlab: boot guest")
				} else {
					runningVM, runningName = e.VM, e.Name
				}
				cancel()
			default:
				if mine {
					runningVM, runningName = "", ""
					if err := s.Guest.Stop(); err != nil {
						log.Warn().Err(err).Msg("devlab: stop guest")
					}
				}
			}
		}
	}
}

// powerOff powers a VM off through the host's observer login, as ESX does when the
// guest OS halts.
func (l *Lab) powerOff(ctx context.Context, h *esxsim.Host, vmName string) error {
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	vm, on, err := observeVM(pctx, h, vmName)
	if err != nil || !on {
		return err
	}
	task, err := vm.PowerOff(pctx)
	if err != nil {
		return err
	}
	return task.Wait(pctx)
}

// poweredOn asks the host, through the observer login, whether the VM is on now.
func (l *Lab) poweredOn(ctx context.Context, h *esxsim.Host, vmName string) (bool, error) {
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, on, err := observeVM(pctx, h, vmName)
	return on, err
}

// observeVM finds the VM through the host's observer login and reads whether it is on.
func observeVM(ctx context.Context, h *esxsim.Host, vmName string) (*object.VirtualMachine, bool, error) {
	c, err := h.Observer(ctx)
	if err != nil {
		return nil, false, err
	}
	vm, err := find.NewFinder(c).VirtualMachine(ctx, vmName)
	if err != nil {
		return nil, false, err
	}
	state, err := vm.PowerState(ctx)
	return vm, state == types.VirtualMachinePowerStatePoweredOn, err
}

func imageInfo(extra map[string]string, c messages.Computer) guestlab.ImageInfo {
	id, _ := strconv.ParseInt(extra[hypervisor.KeyImageID], 10, 64)
	rev, _ := strconv.ParseInt(extra[hypervisor.KeyImageRevisionID], 10, 64)
	return guestlab.ImageInfo{Name: extra[hypervisor.KeyImageName], ID: id, RevisionID: rev, ComputerID: c.ID, Hostname: c.Hostname}
}

// Close stops everything the lab started.
func (l *Lab) Close() {
	if l.ESX != nil {
		l.ESX.OnPowerDown(nil)
	}
	if l.cancel != nil {
		l.cancel()
		l.watchWG.Wait()
	}
	if l.Guests != nil {
		_ = l.Guests.Close()
	}
	if l.ESX != nil {
		l.ESX.Close()
	}
}
