package esxsim

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // ESX thumbprints are traditionally SHA-1; SHA-256 is offered too
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/hypervisor"
)

// Defaults of Options.
const (
	DefaultUsername  = "vclq"
	DefaultDatastore = "datastore1"
	// ObserverUsername is the login of Host.Observer and WatchPower; it is never faulted.
	ObserverUsername = "esxsim-observer"
)

// DefaultNetworks are the port groups each host gets unless Options.Networks is set:
// VCL's private and public switches, plus ESX's default "VM Network".
var DefaultNetworks = []string{"VM Network", "virtualswitch0", "virtualswitch1"}

// Options configure a lab. The zero value is one host with one datastore.
type Options struct {
	// Hosts is the number of ESX hosts. default: 1
	Hosts int
	// Datastores are the local datastores of each host. default: [DefaultDatastore]
	Datastores []string
	// Networks are the port groups of each host. default: DefaultNetworks
	Networks []string
	// Dir is where datastore directories are created (Dir/<host>/<datastore>).
	// default: a new temporary directory, removed by Close.
	Dir string
	// Username and Password are the worker's login. default: DefaultUsername and a
	// random password.
	Username, Password string
	// AllowCloneVM keeps vcsim's CloneVM_Task, which real standalone ESX does not have.
	// default: false (refused with NotSupported).
	AllowCloneVM bool
	// Delay delays every SOAP call (vcsim's DelayConfig.Delay), in milliseconds.
	Delay int
	// WatchInterval is how often WatchPower polls each host (two SOAP calls a poll).
	// default: DefaultWatchInterval.
	WatchInterval time.Duration
	// Logger receives, at debug level, what the simulators' HTTP servers log (such as
	// "TLS handshake error": a client pinning the thumbprint first tries, and fails,
	// a verified handshake). default: discarded.
	Logger *zerolog.Logger
}

// Lab is a set of simulated ESX hosts.
type Lab struct {
	Hosts  []*Host
	dir    string
	ownDir bool
}

// Host is one simulated standalone ESX host.
type Host struct {
	// Name is "esx0", "esx1", ...
	Name string
	// URL is https://127.0.0.1:PORT/sdk, without user information.
	URL *url.URL
	// Username and Password are the worker's login.
	Username, Password string
	// Thumbprint is the SHA-256 thumbprint of the host certificate ("AB:CD:..."),
	// ThumbprintSHA1 the SHA-1 one (what `govc about.cert -thumbprint` shows).
	Thumbprint, ThumbprintSHA1 string
	// Datastores maps each datastore name to its backing directory.
	Datastores map[string]string
	// DatastoreUUIDs maps each datastore name to its VMFS volume UUID (as on ESX,
	// where /vmfs/volumes/<uuid> is the datastore's root and its name a symlink).
	DatastoreUUIDs map[string]string

	model            *simulator.Model
	server           *simulator.Server
	observerPassword string
	faults           *injector
	powerDown        powerDownHook

	mu       sync.Mutex
	observer *vim25.Client

	watchInterval time.Duration
}

// Start starts a lab. Close it when done.
func Start(ctx context.Context, opts Options) (*Lab, error) {
	if opts.Hosts <= 0 {
		opts.Hosts = 1
	}
	if len(opts.Datastores) == 0 {
		opts.Datastores = []string{DefaultDatastore}
	}
	if len(opts.Networks) == 0 {
		opts.Networks = DefaultNetworks
	}
	if opts.Username == "" {
		opts.Username = DefaultUsername
	}
	if opts.Password == "" {
		opts.Password = randomString()
	}
	l := &Lab{dir: opts.Dir}
	if l.dir == "" {
		d, err := os.MkdirTemp("", "esxsim-")
		if err != nil {
			return nil, fmt.Errorf("esxsim: %w", err)
		}
		l.dir, l.ownDir = d, true
	}
	for i := 0; i < opts.Hosts; i++ {
		h, err := startHost(ctx, fmt.Sprintf("esx%d", i), l.dir, opts)
		if err != nil {
			l.Close()
			return nil, err
		}
		l.Hosts = append(l.Hosts, h)
	}
	return l, nil
}

// StartTB starts a lab for a test or benchmark, with datastores under tb.TempDir(),
// closed by tb.Cleanup. It fails tb if the lab does not start.
func StartTB(tb testing.TB, opts Options) *Lab {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := Start(ctx, opts)
	if err != nil {
		tb.Fatalf("esxsim: %v", err)
	}
	tb.Cleanup(l.Close)
	return l
}

// Close stops every host and removes the datastore directories the lab created.
func (l *Lab) Close() {
	for _, h := range l.Hosts {
		h.close()
	}
	l.Hosts = nil
	if l.ownDir {
		_ = os.RemoveAll(l.dir)
	}
}

// WriteEnv writes, per host, VCSIM_URL=https://user:pass@127.0.0.1:PORT/sdk and the
// host's TLS thumbprints, in a form a shell can source (keys suffixed _<n> after the
// first host).
func (l *Lab) WriteEnv(w io.Writer) error {
	for i, h := range l.Hosts {
		sfx := ""
		if i > 0 {
			sfx = fmt.Sprintf("_%d", i)
		}
		_, err := fmt.Fprintf(w, "VCSIM_URL%s=%s\nVCSIM_THUMBPRINT%s=%s\nVCSIM_THUMBPRINT_SHA1%s=%s\n",
			sfx, h.URLWithUser(), sfx, h.Thumbprint, sfx, h.ThumbprintSHA1)
		if err != nil {
			return err
		}
	}
	return nil
}

// URLWithUser is https://user:pass@127.0.0.1:PORT/sdk.
func (h *Host) URLWithUser() string {
	u := *h.URL
	u.User = url.UserPassword(h.Username, h.Password)
	return u.String()
}

// HostConfig is the worker's configuration for this host: its URL, login and pinned
// thumbprint (hypervisor.New(h.HostConfig())). Timeouts and limits are left at their
// defaults.
func (h *Host) HostConfig() hypervisor.HostConfig {
	return hypervisor.HostConfig{Name: h.Name, URL: h.URL.String(), Username: h.Username, Password: h.Password, Thumbprint: h.Thumbprint}
}

// HostConfigs lists HostConfig for every host of the lab.
func (l *Lab) HostConfigs() []hypervisor.HostConfig {
	cfgs := make([]hypervisor.HostConfig, len(l.Hosts))
	for i, h := range l.Hosts {
		cfgs[i] = h.HostConfig()
	}
	return cfgs
}

// Addr is the host's 127.0.0.1:PORT.
func (h *Host) Addr() string { return h.URL.Host }

// DatastoreDir is the directory backing datastore ds, or "" if there is none.
func (h *Host) DatastoreDir(ds string) string { return h.Datastores[ds] }

func startHost(ctx context.Context, name, root string, opts Options) (*Host, error) {
	fail := func(err error) (*Host, error) { return nil, fmt.Errorf("esxsim: host %s: %w", name, err) }

	cert, err := selfSigned(name)
	if err != nil {
		return fail(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fail(err)
	}
	h := &Host{
		Name:             name,
		Username:         opts.Username,
		Password:         opts.Password,
		Thumbprint:       thumbprint(sha256.New(), leaf.Raw),
		ThumbprintSHA1:   thumbprint(sha1.New(), leaf.Raw),
		Datastores:       map[string]string{},
		DatastoreUUIDs:   map[string]string{},
		observerPassword: randomString(),
		faults:           newInjector(!opts.AllowCloneVM),
		watchInterval:    opts.WatchInterval,
	}
	if h.watchInterval <= 0 {
		h.watchInterval = DefaultWatchInterval
	}

	m := simulator.ESX()
	m.Datastore = 0
	m.Machine = 0
	m.DelayConfig.Delay = opts.Delay
	if err := m.Create(); err != nil {
		return fail(err)
	}
	h.model = m
	m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	m.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(opts.Username, opts.Password)}
	m.Map().SessionManager().ValidLogin = func(req *types.Login) bool {
		return (req.UserName == h.Username && req.Password == h.Password) ||
			(req.UserName == ObserverUsername && req.Password == h.observerPassword)
	}
	m.Map().Handler = h.handle
	m.Map().AddHandler(&taskFaults{in: h.faults})
	h.server = m.Service.NewServer()
	routeServerLog(h.server, opts.Logger, name)
	u := *h.server.URL
	u.User = nil
	h.URL = &u
	if host, _, err := net.SplitHostPort(u.Host); err != nil || host != "127.0.0.1" {
		h.close()
		return fail(fmt.Errorf("server is not on loopback: %s", u.Host))
	}

	c, err := h.Observer(ctx)
	if err != nil {
		h.close()
		return fail(err)
	}
	if err := h.setup(ctx, c, filepath.Join(root, name), opts); err != nil {
		h.close()
		return fail(err)
	}
	if ref := c.ServiceContent.VirtualDiskManager; ref != nil {
		h.installDiskManager(*ref)
	}
	h.installBrowsers()
	return h, nil
}

func (h *Host) setup(ctx context.Context, c *vim25.Client, dir string, opts Options) error {
	f := find.NewFinder(c, true)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		return err
	}
	f.SetDatacenter(dc)
	host, err := f.DefaultHostSystem(ctx)
	if err != nil {
		return err
	}
	dss, err := host.ConfigManager().DatastoreSystem(ctx)
	if err != nil {
		return err
	}
	for _, ds := range opts.Datastores {
		d := filepath.Join(dir, ds)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		created, err := dss.CreateLocalDatastore(ctx, ds, d)
		if err != nil {
			return fmt.Errorf("datastore %s: %w", ds, err)
		}
		h.Datastores[ds] = d
		h.DatastoreUUIDs[ds] = h.makeVMFS(created.Reference(), ds)
	}
	ns, err := host.ConfigManager().NetworkSystem(ctx)
	if err != nil {
		return err
	}
	existing := map[string]bool{}
	nets, _ := f.NetworkList(ctx, "*")
	for _, n := range nets {
		existing[n.GetInventoryPath()[strings.LastIndex(n.GetInventoryPath(), "/")+1:]] = true
	}
	for _, n := range opts.Networks {
		if existing[n] {
			continue
		}
		err := ns.AddPortGroup(ctx, types.HostPortGroupSpec{Name: n, VswitchName: "vSwitch0", Policy: types.HostNetworkPolicy{}})
		if err != nil {
			return fmt.Errorf("port group %s: %w", n, err)
		}
	}
	return nil
}

// makeVMFS reports the local datastore ref as a VMFS volume with a new UUID (info is
// a VmfsDatastoreInfo, as on ESX); its URL stays the backing directory, which vcsim
// serves files from. It returns the UUID, in ESX's form 8-8-4-12 hex digits.
func (h *Host) makeVMFS(ref types.ManagedObjectReference, name string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	x := hex.EncodeToString(b)
	uuid := x[:8] + "-" + x[8:16] + "-" + x[16:20] + "-" + x[20:32]
	ds := h.model.Map().Get(ref).(*simulator.Datastore)
	info := *ds.Info.GetDatastoreInfo()
	ds.Info = &types.VmfsDatastoreInfo{DatastoreInfo: info, Vmfs: &types.HostVmfsVolume{
		HostFileSystemVolume: types.HostFileSystemVolume{Type: "VMFS", Name: name, Capacity: ds.Summary.Capacity}, Uuid: uuid, Local: types.NewBool(true)}}
	return uuid
}

// Observer is a client logged in as ObserverUsername, never faulted: for verifying
// results with govmomi's own API (as govc would). It is shared; do not log it out.
func (h *Host) Observer(ctx context.Context) (*vim25.Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.observer != nil {
		return h.observer, nil
	}
	sc := soap.NewClient(h.URL, false)
	sc.SetThumbprint(h.URL.Host, h.Thumbprint)
	c, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, err
	}
	if err := session.NewManager(c).Login(ctx, url.UserPassword(ObserverUsername, h.observerPassword)); err != nil {
		return nil, err
	}
	h.observer = c
	return c, nil
}

// Model is the underlying vcsim model, for tests that need to reach into it.
func (h *Host) Model() *simulator.Model { return h.model }

// SetFreeSpace sets the free space vcsim reports for datastore ds.
func (h *Host) SetFreeSpace(ds string, bytes int64) error {
	ctx := h.model.Service.Context
	for _, e := range h.model.Map().All("Datastore") {
		d, ok := e.(*simulator.Datastore)
		if !ok || d.Name != ds {
			continue
		}
		ctx.WithLock(d, func() {
			d.Summary.FreeSpace = bytes
			d.Info.GetDatastoreInfo().FreeSpace = bytes
		})
		return nil
	}
	return fmt.Errorf("esxsim: host %s: no datastore %q", h.Name, ds)
}

func (h *Host) close() {
	h.mu.Lock()
	h.observer = nil
	h.mu.Unlock()
	if h.server != nil {
		h.server.Close()
		h.server = nil
	}
	if h.model != nil {
		h.model.Remove()
		h.model = nil
	}
}

func selfSigned(name string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name + ".esxsim.test", Organization: []string{"esxsim"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{name + ".esxsim.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func thumbprint(hs hash.Hash, der []byte) string {
	_, _ = hs.Write(der)
	sum := hex.EncodeToString(hs.Sum(nil))
	var b strings.Builder
	for i := 0; i < len(sum); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(strings.ToUpper(sum[i : i+2]))
	}
	return b.String()
}

func randomString() string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		panic(errors.New("esxsim: no randomness"))
	}
	return hex.EncodeToString(b)
}

// routeServerLog sends what the simulator's HTTP server logs to logger at debug
// level instead of the standard logger (standard error). The server is already
// serving, but nothing has connected: no client knows its URL yet. Locking the
// server's connection table (CloseClientConnections, with no connection to close)
// orders this write before the first connection's use of it.
func routeServerLog(s *simulator.Server, logger *zerolog.Logger, host string) {
	l := zerolog.Nop()
	if logger != nil {
		l = logger.With().Str("esx_host", host).Logger()
	}
	s.Config.ErrorLog = log.New(debugWriter{l}, "", 0)
	s.CloseClientConnections()
}

// debugWriter writes each line it is given as a debug message.
type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg("vcsim http server: " + strings.TrimSpace(string(p)))
	return len(p), nil
}
