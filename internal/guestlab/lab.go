package guestlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Defaults.
const (
	// StateDir holds one file per live lab (its owner's pid) and the allocation lock.
	StateDir = "/run/vclq-guestlab"
	// firstHostOffset is the offset in the subnet of the first guest or client address.
	firstHostOffset = 10
	// cmdTimeout bounds each ip/cp/ssh-keygen command the lab runs.
	cmdTimeout = 30 * time.Second
)

// candidateParents are split into /27s when Config.Subnet is not set. Only documentation
// ranges (RFC 5737): nothing here is ever routed anywhere.
var candidateParents = []netip.Prefix{
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"),
}

// Tools the lab runs; Check looks for each.
var tools = []string{"ip", "unshare", "nsenter", "sshd", "ssh-keygen", "iptables", "iptables-restore", "cp"}

// Config configures a Lab. The zero value works.
type Config struct {
	// Subnet for the bridge, guests and clients (default: the first free /27 of
	// 198.51.100.0/24 or 192.0.2.0/24). Must be inside those ranges, at least a /28,
	// and overlap nothing on the host.
	Subnet netip.Prefix
	// SubnetBits is the prefix length of an automatically chosen subnet, 24-28
	// (default 27: 8 labs per /24, 20 guest and client addresses each).
	SubnetBits int
	// Dir holds the guests' disks (default: a new temporary directory, removed by
	// Close; a given Dir is kept).
	Dir string
	// AuthorizedKeys are the lines of root's authorized_keys on every fresh disk:
	// the management node's public key, as baked into an image.
	AuthorizedKeys []string
	// Logger (default: disabled).
	Logger *zerolog.Logger
}

// Lab is a bridge, a subnet, and the guests and clients on it. Its methods are safe
// for concurrent use.
type Lab struct {
	id      string
	bridge  string
	subnet  netip.Prefix
	hostIP  netip.Addr
	dir     string
	ownDir  bool
	keys    []string
	log     zerolog.Logger
	mu      sync.Mutex
	next    int // next host offset
	nveth   int
	guests  []*Guest
	clients []*Client
	closed  bool

	tmplMu sync.Mutex
	tmpl   string // the guests' /etc template (disk.go), made at the first disk
}

var nameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,19}$`)

// Check reports nil when a lab can run here, else an error wrapping ErrUnavailable
// that says why (not root, or which tool is missing).
func Check() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root (running as uid %d)", ErrUnavailable, os.Geteuid())
	}
	var missing []string
	for _, t := range tools {
		if _, err := lookTool(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %s (install openssh-server iptables nftables iproute2 util-linux)", ErrUnavailable, strings.Join(missing, ", "))
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("%w: no network namespaces: %v", ErrUnavailable, err)
	}
	if !hasOverlayFS() {
		return fmt.Errorf("%w: no overlay file system (guests' /etc is an overlay; try modprobe overlay)", ErrUnavailable)
	}
	return nil
}

// hasOverlayFS reports whether the kernel offers overlayfs, loading its module if
// needed.
func hasOverlayFS() bool {
	listed := func() bool {
		b, err := os.ReadFile("/proc/filesystems")
		return err == nil && bytes.Contains(b, []byte("\toverlay\n"))
	}
	if listed() {
		return true
	}
	if p, err := lookTool("modprobe"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = exec.CommandContext(ctx, p, "overlay").Run()
	}
	return listed()
}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// New creates a lab: picks (or checks) the subnet, creates the bridge with the
// subnet's first address, and sweeps what dead labs left behind. It blocks for the
// few ip commands this takes.
func New(ctx context.Context, cfg Config) (*Lab, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	bits := cfg.SubnetBits
	if bits == 0 {
		bits = 27
	}
	if bits < 24 || bits > 28 {
		return nil, fmt.Errorf("%w: SubnetBits %d outside 24..28", ErrNoSubnet, bits)
	}
	l := &Lab{id: randomID(), keys: cfg.AuthorizedKeys, next: firstHostOffset, log: zerolog.Nop()}
	if cfg.Logger != nil {
		l.log = cfg.Logger.With().Str("lab", l.id).Logger()
	}
	l.bridge = "vq" + l.id + "br"
	if cfg.Dir != "" {
		l.dir = cfg.Dir
		if err := os.MkdirAll(l.dir, 0o700); err != nil {
			return nil, fmt.Errorf("guestlab: %w", err)
		}
	} else {
		d, err := os.MkdirTemp("", "vclq-guestlab-"+l.id+"-")
		if err != nil {
			return nil, fmt.Errorf("guestlab: %w", err)
		}
		l.dir, l.ownDir = d, true
	}
	if err := l.claim(ctx, cfg.Subnet, bits); err != nil {
		if l.ownDir {
			os.RemoveAll(l.dir)
		}
		return nil, err
	}
	l.log.Info().Str("bridge", l.bridge).Stringer("subnet", l.subnet).Msg("guest lab up")
	return l, nil
}

// claim picks the subnet and creates the bridge under the host-wide lock.
func (l *Lab) claim(ctx context.Context, want netip.Prefix, bits int) error {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return fmt.Errorf("guestlab: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(StateDir, "alloc.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("guestlab: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("guestlab: lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	sweep(ctx, l.log)
	used, err := hostPrefixes(ctx)
	if err != nil {
		return err
	}
	var cands []netip.Prefix
	if want.IsValid() {
		want = want.Masked()
		if !want.Addr().Is4() || want.Bits() > 28 || !inDocRanges(want) {
			return fmt.Errorf("%w: %s is not an IPv4 /28 or larger inside %v", ErrNoSubnet, want, candidateParents)
		}
		cands = []netip.Prefix{want}
	} else {
		for _, p := range candidateParents {
			cands = append(cands, split(p, bits)...)
		}
	}
	for _, c := range cands {
		if overlapsAny(c, used) {
			continue
		}
		l.subnet = c
		l.hostIP = c.Addr().Next()
		if err := l.createBridge(ctx); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(StateDir, l.id), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			l.deleteBridge()
			return fmt.Errorf("guestlab: %w", err)
		}
		return nil
	}
	return fmt.Errorf("%w: every candidate overlaps an address or route on this host (%v)", ErrNoSubnet, cands)
}

func (l *Lab) createBridge(ctx context.Context) error {
	steps := [][]string{
		{"ip", "link", "add", l.bridge, "type", "bridge"},
		{"ip", "addr", "add", netip.PrefixFrom(l.hostIP, l.subnet.Bits()).String(), "dev", l.bridge},
		{"ip", "link", "set", l.bridge, "up"},
	}
	for _, s := range steps {
		if _, err := run(ctx, nil, s...); err != nil {
			l.deleteBridge()
			return err
		}
	}
	return nil
}

func (l *Lab) deleteBridge() {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	_, _ = run(ctx, nil, "ip", "link", "del", l.bridge)
}

// ID is the lab's random id, part of every name it creates.
func (l *Lab) ID() string { return l.id }

// Bridge is the name of the lab's bridge in the root namespace.
func (l *Lab) Bridge() string { return l.bridge }

// Subnet is the lab's subnet.
func (l *Lab) Subnet() netip.Prefix { return l.subnet }

// HostIP is the bridge's address: where connections from the root namespace (the
// management node, i.e. the test process) come from.
func (l *Lab) HostIP() netip.Addr { return l.hostIP }

// Guests returns the lab's guests in creation order.
func (l *Lab) Guests() []*Guest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Guest(nil), l.guests...)
}

// allocate returns the next free address and veth index.
func (l *Lab) allocate() (netip.Addr, int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return netip.Addr{}, 0, ErrClosed
	}
	a := l.subnet.Addr()
	for i := 0; i < l.next; i++ {
		a = a.Next()
	}
	last := lastHost(l.subnet)
	if !l.subnet.Contains(a) || a.Compare(last) > 0 {
		return netip.Addr{}, 0, fmt.Errorf("%w: %s", ErrFull, l.subnet)
	}
	l.next++
	l.nveth++
	return a, l.nveth, nil
}

// nsName is the network namespace of a guest or client.
func (l *Lab) nsName(name string) string { return "vclq-" + l.id + "-" + name }

// plumb creates the namespace and a veth pair into the bridge, with addr on the
// guest side (named eth0 there).
func (l *Lab) plumb(ctx context.Context, ns string, idx int, addr netip.Addr) error {
	host := fmt.Sprintf("vq%sh%d", l.id, idx)
	peer := fmt.Sprintf("vq%sg%d", l.id, idx)
	in := func(args ...string) []string { return append([]string{"ip", "netns", "exec", ns}, args...) }
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", host, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", ns},
		{"ip", "link", "set", host, "master", l.bridge, "up"},
		in("ip", "link", "set", "lo", "up"),
		in("ip", "link", "set", peer, "name", "eth0"),
		in("ip", "addr", "add", netip.PrefixFrom(addr, l.subnet.Bits()).String(), "dev", "eth0"),
		in("ip", "link", "set", "eth0", "up"),
	}
	for _, s := range steps {
		if _, err := run(ctx, nil, s...); err != nil {
			_, _ = run(context.WithoutCancel(ctx), nil, "ip", "link", "del", host)
			_, _ = run(context.WithoutCancel(ctx), nil, "ip", "netns", "del", ns)
			return err
		}
	}
	return nil
}

// Close stops every guest, removes the namespaces, the bridge, the disks (when the
// lab made its directory) and the lab's state file. It is idempotent and returns the
// errors it met, joined.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	guests, clients := l.guests, l.clients
	l.mu.Unlock()

	var errs []error
	for _, g := range guests {
		if err := g.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*cmdTimeout)
	defer cancel()
	for _, g := range guests {
		if _, err := run(ctx, nil, "ip", "netns", "del", g.ns); err != nil {
			errs = append(errs, err)
		}
	}
	for _, c := range clients {
		c.killAll()
		if _, err := run(ctx, nil, "ip", "netns", "del", c.ns); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := run(ctx, nil, "ip", "link", "del", l.bridge); err != nil {
		errs = append(errs, err)
	}
	if l.ownDir {
		if err := os.RemoveAll(l.dir); err != nil {
			errs = append(errs, err)
		}
	}
	_ = os.Remove(filepath.Join(StateDir, l.id))
	l.log.Info().Msg("guest lab closed")
	return errors.Join(errs...)
}

// sweep removes the namespaces and bridges of labs whose owning process is gone.
// Called with the allocation lock held.
func sweep(ctx context.Context, log zerolog.Logger) {
	ents, err := os.ReadDir(StateDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		id := e.Name()
		if id == "alloc.lock" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(StateDir, id))
		if err != nil {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			continue // alive
		}
		log.Warn().Str("stale_lab", id).Int("pid", pid).Msg("sweeping a dead lab")
		if out, err := run(ctx, nil, "ip", "netns", "list"); err == nil {
			for _, line := range strings.Split(string(out), "\n") {
				f := strings.Fields(line)
				if len(f) > 0 && strings.HasPrefix(f[0], "vclq-"+id+"-") {
					killNetns(ctx, f[0])
					_, _ = run(ctx, nil, "ip", "netns", "del", f[0])
				}
			}
		}
		_, _ = run(ctx, nil, "ip", "link", "del", "vq"+id+"br")
		_ = os.Remove(filepath.Join(StateDir, id))
	}
}

// killNetns kills every process in a network namespace.
func killNetns(ctx context.Context, ns string) {
	out, err := run(ctx, nil, "ip", "netns", "pids", ns)
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// hostPrefixes lists the IPv4 prefixes of the host's addresses and routes.
func hostPrefixes(ctx context.Context) ([]netip.Prefix, error) {
	var ps []netip.Prefix
	out, err := run(ctx, nil, "ip", "-j", "-4", "addr", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("guestlab: parse ip addr: %w", err)
	}
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if ad, err := netip.ParseAddr(a.Local); err == nil {
				ps = append(ps, netip.PrefixFrom(ad, a.PrefixLen).Masked())
			}
		}
	}
	out, err = run(ctx, nil, "ip", "-j", "-4", "route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return nil, fmt.Errorf("guestlab: parse ip route: %w", err)
	}
	for _, r := range routes {
		if r.Dst == "" || r.Dst == "default" {
			continue
		}
		if !strings.Contains(r.Dst, "/") {
			r.Dst += "/32"
		}
		if p, err := netip.ParsePrefix(r.Dst); err == nil {
			ps = append(ps, p.Masked())
		}
	}
	return ps, nil
}

func overlapsAny(p netip.Prefix, used []netip.Prefix) bool {
	for _, u := range used {
		if u.Overlaps(p) {
			return true
		}
	}
	return false
}

func inDocRanges(p netip.Prefix) bool {
	for _, c := range candidateParents {
		if c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// split cuts p into subnets of the given length.
func split(p netip.Prefix, bits int) []netip.Prefix {
	var out []netip.Prefix
	n := 1 << (bits - p.Bits())
	size := 1 << (32 - bits)
	base := p.Masked().Addr().As4()
	start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	for i := 0; i < n; i++ {
		v := start + uint32(i*size)
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		out = append(out, netip.PrefixFrom(a, bits))
	}
	return out
}

// lastHost is the address before the broadcast address.
func lastHost(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(1)<<(32-p.Bits()) - 2
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func randomID() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// run runs a command with a bounded context and returns its stdout; the error carries
// the command and its stderr.
func run(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	path, err := lookTool(args[0])
	if err != nil {
		return nil, fmt.Errorf("guestlab: %w", err)
	}
	cmd := exec.CommandContext(ctx, path, args[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("guestlab: %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
