package devlab

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vclq/vclq/flow"
	"github.com/vclq/vclq/internal/esxsim"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/osconfig"
)

// Setup is the management node's flow configuration for the lab: its hosts with
// TLS pinned by thumbprint, the management key and known_hosts, as in production.
func (l *Lab) Setup() flow.Setup {
	s := flow.Setup{SSHKeyFile: l.KeyFile, KnownHostsFile: l.KnownHosts, ManagementIP: l.ManagementIP}
	for _, h := range l.ESX.Hosts {
		s.Hosts = append(s.Hosts, flow.HostSetup{Name: h.Name, URL: h.URL.String(), Username: h.Username,
			Password: h.Password, Thumbprint: h.Thumbprint, MaxConcurrent: 8})
	}
	return s
}

// Handler builds the flow handler over the lab: over SSH to the namespace guests or,
// without them, over simulated guests that follow their VM's power state (GuestsWhy
// says why). boot bounds the readiness wait. The close function ends host sessions.
func (l *Lab) Handler(log zerolog.Logger, sealer *flow.Sealer, boot flow.BootWait) (*flow.Handler, func(context.Context), error) {
	return l.SharedHandler(log, sealer, boot, nil)
}

// SharedHandler is Handler with the host keys it records shared through keys (the
// vclq_hostkeys bucket, as a real worker shares them: sharedkeys); nil keeps them in
// the lab's known_hosts only. Simulated guests have no host keys.
func (l *Lab) SharedHandler(log zerolog.Logger, sealer *flow.Sealer, boot flow.BootWait, keys osconfig.HostKeyStore) (*flow.Handler, func(context.Context), error) {
	setup := l.Setup()
	setup.HostKeyStore = keys
	cfg, closeHosts, err := setup.Config(log)
	if err != nil {
		return nil, nil, err
	}
	cfg.Sealer, cfg.LinuxBootWait, cfg.WindowsBootWait = sealer, boot, boot
	if l.Guests == nil {
		l.simOnce.Do(func() { l.sims = l.simGuests() })
		sims := l.sims
		cfg.ExpectNewHostKey, cfg.SettleHostKey = nil, nil
		cfg.Guest = func(t osconfig.Target, _ string, _ osconfig.Progress) (flow.Guest, error) {
			g, ok := sims[t.Slot]
			if !ok {
				return nil, fmt.Errorf("devlab: no slot %s", t.Slot)
			}
			return g, nil
		}
	}
	h, err := flow.NewHandler(cfg)
	if err != nil {
		closeHosts(context.Background())
		return nil, nil, err
	}
	return h, closeHosts, nil
}

// RequestSpec describes a request for a lab slot.
type RequestSpec struct {
	Kind        messages.Kind
	Slot        *Slot
	Image       ImageSpec
	Reservation int64
	Request     int64
	State       string // request.state; default: the kind's VCL state
	Users       []messages.User
	RemoteIP    string
	Target      *messages.TargetImage
	VMDisk      string // default shared
}

// Request builds a valid request for a lab slot.
func (l *Lab) Request(s RequestSpec) *messages.Request {
	state := s.State
	if state == "" {
		state = map[messages.Kind]string{messages.KindNew: messages.StateNew, messages.KindReload: messages.StateReload,
			messages.KindReserved: messages.StateReserved, messages.KindReclaim: messages.StateDeleted, messages.KindImage: messages.StateImage}[s.Kind]
	}
	disk := s.VMDisk
	if disk == "" {
		disk = messages.VMDiskShared
	}
	now := time.Now().UTC().Truncate(time.Second)
	os := s.Image.OSType
	if os == "" {
		os = messages.OSLinux
	}
	return &messages.Request{
		Schema: messages.SchemaVersion, Kind: s.Kind,
		Request:     messages.RequestInfo{ID: s.Request, State: state, Start: now, End: now.Add(2 * time.Hour), Modified: now},
		Reservation: messages.ReservationInfo{ID: s.Reservation},
		Computer:    s.Slot.Computer,
		VMHost: messages.VMHost{ID: s.Slot.HostID, Hostname: s.Slot.Host.Name, Profile: messages.VMProfile{
			DatastorePath: "/vmfs/volumes/" + Datastore, VMPath: "/vmfs/volumes/" + Datastore,
			VirtualSwitch0: "virtualswitch0", VirtualSwitch1: "virtualswitch1", VMDisk: disk,
		}},
		Image:            messages.Image{ID: s.Image.ID, Name: s.Image.Name, RevisionID: s.Image.RevisionID, Revision: s.Image.Revision, OSType: os, MinRAMMB: 512, MinCPUs: 1},
		Users:            s.Users,
		RemoteIP:         s.RemoteIP,
		TargetImage:      s.Target,
		ManagementNodeIP: l.ManagementIP,
	}
}

// simGuest stands in for a guest where namespace guests cannot run: it answers while
// its VM is powered on and keeps currentimage.txt's tags and accounts in memory. It
// runs no sshd, firewall or useradd: `vclq dev` says so.
type simGuest struct {
	mu sync.Mutex
	// vm is the VM (managed object id) the guest runs in; downed are VMs the host
	// stopped, whose older power-on events are checked with the host.
	vm      string
	vmName  string
	downed  map[string]bool
	running bool
	// halt powers the VM off, as ESX does when the guest OS halts (a shutdown inside
	// the guest, PreCapture's), through the host's observer login.
	halt     func(vmName string) error
	status   osconfig.NodeStatus
	users    map[string]bool
	loggedIn []string
}

func (l *Lab) simGuests() map[string]*simGuest {
	sims := map[string]*simGuest{}
	for _, s := range l.Slots {
		sims[s.Computer.ShortName] = &simGuest{users: map[string]bool{}, downed: map[string]bool{}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = chain(l.cancel, cancel)
	for _, s := range l.Slots {
		host := s.Host
		sims[s.Computer.ShortName].halt = func(vmName string) error { return l.powerOff(ctx, host, vmName) }
	}
	// As with namespace guests (routeDown): a VM's stop reaches its guest before the
	// host's call returns.
	l.ESX.OnPowerDown(func(p esxsim.PowerDown) {
		s, ok := l.slotOf(p.Host, p.Name)
		if !ok || p.Observer {
			return
		}
		sims[s.Computer.ShortName].down(p)
	})
	l.watchWG.Add(1)
	go func() {
		defer l.watchWG.Done()
		_ = l.ESX.WatchPower(ctx, func(e esxsim.PowerEvent) {
			s, ok := l.slotOf(e.Host, e.Name)
			if !ok {
				return
			}
			g := sims[s.Computer.ShortName]
			if e.PoweredOn() && g.wasDowned(e.VM) {
				// Reported on before the host stopped it? Ask the host.
				if on, err := l.poweredOn(ctx, s.Host, e.Name); err != nil || !on {
					return
				}
			}
			g.follow(e)
		})
	}()
	return sims
}

// down is a stop of VM p.VM by the host, before the host carries it out.
func (g *simGuest) down(p esxsim.PowerDown) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.vm != "" && g.vm != p.VM {
		return // not the VM this guest follows
	}
	switch {
	case p.Reset():
		// A hard reboot: the guest stays up.
	case p.Removed():
		g.downed[p.VM] = true
		g.vm, g.vmName, g.running, g.status, g.users = "", "", false, osconfig.NodeStatus{}, map[string]bool{}
	default:
		g.downed[p.VM] = true
		g.running = false
	}
}

func (g *simGuest) wasDowned(vm string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.downed[vm]
}

// follow applies a power event of the watch.
func (g *simGuest) follow(e esxsim.PowerEvent) {
	g.mu.Lock()
	defer g.mu.Unlock()
	mine := g.vm == "" || g.vm == e.VM
	switch {
	case e.Removed:
		delete(g.downed, e.VM)
		if mine {
			g.vm, g.vmName, g.running, g.status, g.users = "", "", false, osconfig.NodeStatus{}, map[string]bool{}
		}
	case e.PoweredOn():
		delete(g.downed, e.VM)
		if g.vm != "" && g.vm != e.VM {
			// The previous VM is gone (its removal not seen yet): a new disk.
			g.status, g.users = osconfig.NodeStatus{}, map[string]bool{}
		}
		if g.status.ImageName == "" {
			img := imageInfo(e.ExtraConfig, messages.Computer{})
			g.status = osconfig.NodeStatus{ImageName: img.Name, ImageID: img.ID, RevisionID: img.RevisionID}
		}
		g.vm, g.vmName, g.running = e.VM, e.Name, true
	default:
		if mine {
			g.running = false
		}
	}
}

func chain(a, b context.CancelFunc) context.CancelFunc {
	if a == nil {
		return b
	}
	return func() { a(); b() }
}

func (g *simGuest) up() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.running {
		return osconfig.ErrNotResponding
	}
	return nil
}

func (g *simGuest) WaitForResponse(ctx context.Context, initialDelay, timeout, interval time.Duration) error {
	deadline := time.Now().Add(timeout)
	for attempts := 1; ; attempts++ {
		if g.up() == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: simulated guest after %s (%d attempts)", osconfig.ErrNotResponding, timeout, attempts)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(min(interval, 50*time.Millisecond)):
		}
	}
}

func (g *simGuest) NodeStatus(context.Context) (osconfig.NodeStatus, error) {
	if err := g.up(); err != nil {
		return osconfig.NodeStatus{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.status, nil
}

func (g *simGuest) PostLoad(context.Context) error {
	if err := g.up(); err != nil {
		return err
	}
	g.mu.Lock()
	g.status.PostLoad = true
	g.mu.Unlock()
	return nil
}

func (g *simGuest) AddUsers(_ context.Context, users []osconfig.User) ([]osconfig.Credential, error) {
	if err := g.up(); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var creds []osconfig.Credential
	for _, u := range users {
		g.users[u.Login] = true
		creds = append(creds, osconfig.Credential{Login: u.Login, Password: osconfig.Secret("simulated-" + u.Login)})
	}
	return creds, nil
}

func (g *simGuest) GrantAccess(context.Context, string) error { return g.up() }

func (g *simGuest) LoggedInUsers(context.Context) ([]string, error) {
	if err := g.up(); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.loggedIn...), nil
}

func (g *simGuest) Sanitize(_ context.Context, logins []string) error {
	if err := g.up(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.loggedIn) > 0 {
		return osconfig.ErrUserLoggedIn
	}
	for _, l := range logins {
		delete(g.users, l)
	}
	return nil
}

// PreCapture sanitises and shuts the guest down; like a namespace guest (and a real
// one) whose OS halts, its VM then powers off, so a capture does not wait out its
// shutdown timeout for a guest that never stops.
func (g *simGuest) PreCapture(ctx context.Context, logins []string) error {
	if err := g.Sanitize(ctx, logins); err != nil {
		return err
	}
	g.mu.Lock()
	g.running = false
	vmName, halt := g.vmName, g.halt
	g.mu.Unlock()
	if halt == nil || vmName == "" {
		return nil
	}
	if err := halt(vmName); err != nil {
		return fmt.Errorf("simulated guest: power off %s after shutdown: %w", vmName, err)
	}
	return nil
}
