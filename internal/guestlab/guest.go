package guestlab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/vclq/vclq/internal/wait"
)

// ImageInfo is what a guest's disk says about the image it was loaded from: the
// content of root's currentimage.txt on a fresh disk.
type ImageInfo struct {
	Name       string // imagerevision.imagename, the file's first line
	ID         int64  // image.id
	RevisionID int64  // imagerevision.id
	ComputerID int64  // computer.id
	Hostname   string // computer.hostname (optional)
}

// CurrentImageTxt renders the file as VCL writes it when capturing an image.
func (i ImageInfo) CurrentImageTxt() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nid=%d\nimagerevision_id=%d\n", i.Name, i.ID, i.RevisionID)
	if i.ComputerID != 0 {
		fmt.Fprintf(&b, "computer_id=%d\n", i.ComputerID)
	}
	if i.Hostname != "" {
		fmt.Fprintf(&b, "computer_hostname=%s\n", i.Hostname)
	}
	return b.String()
}

// Guest is one VM slot's Linux machine. Its methods are safe for concurrent use.
type Guest struct {
	lab  *Lab
	name string
	ns   string
	ip   netip.Addr
	dir  string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	initPID int
	fresh   bool      // the disk must be (re)made at the next Boot
	image   ImageInfo // what the disk holds; zero before the first Boot
}

// NewGuest creates a stopped guest with the next free address: its network
// namespace vclq-<lab id>-<name>, a veth into the bridge, and its disk (etc, root and
// home copied from the host, a new host key).
// name is 1-20 characters of [a-z0-9-], unique in the lab.
func (l *Lab) NewGuest(ctx context.Context, name string) (*Guest, error) {
	if !nameRe.MatchString(name) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	addr, idx, err := l.allocate()
	if err != nil {
		return nil, err
	}
	g := &Guest{lab: l, name: name, ns: l.nsName(name), ip: addr, dir: filepath.Join(l.dir, name)}
	if err := os.MkdirAll(g.dir, 0o700); err != nil {
		return nil, fmt.Errorf("guestlab: guest %s: %w", name, err)
	}
	if err := g.makeDisk(ctx); err != nil {
		return nil, fmt.Errorf("guestlab: guest %s: make disk: %w", name, err)
	}
	if err := l.plumb(ctx, g.ns, idx, addr); err != nil {
		return nil, fmt.Errorf("guestlab: guest %s: %w", name, err)
	}
	l.mu.Lock()
	l.guests = append(l.guests, g)
	l.mu.Unlock()
	l.log.Debug().Str("guest", name).Stringer("ip", addr).Msg("guest created")
	return g, nil
}

// Name is the guest's name in the lab.
func (g *Guest) Name() string { return g.name }

// Netns is the guest's network namespace (for `ip netns exec`).
func (g *Guest) Netns() string { return g.ns }

// IP is the guest's address.
func (g *Guest) IP() netip.Addr { return g.ip }

// Addr is the guest's SSH address, ip:22.
func (g *Guest) Addr() string { return netip.AddrPortFrom(g.ip, 22).String() }

// Dir is the guest's disk directory (etc, root, home, and the lab's files).
func (g *Guest) Dir() string { return g.dir }

// Running reports whether the guest's sshd (its init) is alive.
func (g *Guest) Running() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.runningLocked()
}

func (g *Guest) runningLocked() bool {
	if g.done == nil {
		return false
	}
	select {
	case <-g.done:
		return false
	default:
		return true
	}
}

// Image is the image the guest's disk holds (zero before the first Boot).
func (g *Guest) Image() ImageInfo {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.image
}

// Reimage stops the guest and marks its disk to be made fresh (with a new host key)
// at the next Boot: what a reload that recreates the VM does.
func (g *Guest) Reimage() error {
	err := g.Stop()
	g.mu.Lock()
	g.fresh = true
	g.mu.Unlock()
	return err
}

// Boot starts the guest from img. The disk (made by NewGuest from the host's files)
// gets img's currentimage.txt in root's home, as if it came from the image, when it
// was never booted; it is made fresh first after Reimage or when img names another
// image or revision than the disk holds; otherwise the disk boots as it was left. It returns once sshd runs
// (it may not listen yet); booting a running guest is an error.
func (g *Guest) Boot(ctx context.Context, img ImageInfo) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.runningLocked() {
		return fmt.Errorf("guestlab: guest %s: already running", g.name)
	}
	differs := img.Name != g.image.Name || img.RevisionID != g.image.RevisionID
	if g.fresh || (g.image.Name != "" && differs) {
		if err := g.makeDisk(ctx); err != nil {
			return fmt.Errorf("guestlab: guest %s: make disk: %w", g.name, err)
		}
		g.fresh, g.image = false, ImageInfo{}
	}
	if g.image.Name == "" && img.Name != "" {
		// A disk never booted from an image: the image's file, as if it came from it.
		f := filepath.Join(g.dir, "root", "currentimage.txt")
		if err := os.WriteFile(f, []byte(img.CurrentImageTxt()), 0o644); err != nil {
			return fmt.Errorf("guestlab: guest %s: %w", g.name, err)
		}
	}
	g.image = img
	if err := g.start(ctx); err != nil {
		return fmt.Errorf("guestlab: guest %s: boot: %w", g.name, err)
	}
	g.lab.log.Debug().Str("guest", g.name).Str("image", img.Name).Int("init_pid", g.initPID).Msg("guest booted")
	return nil
}

const sshdConfig = `# vclq guest lab
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
PrintMotd no
PidFile none
MaxStartups 50:30:100
Subsystem sftp internal-sftp
`

// powerScript replaces shutdown/poweroff/halt inside the guest: sshd is the PID
// namespace's init, and when it exits the kernel kills the rest (this script too).
// A namespace's init ignores signals it has no handler for, and sshd installs its
// SIGTERM handler only after it starts listening, so a guest powered off right after
// boot would ignore a single TERM: the script repeats it, for at most 10 s.
const powerScript = "#!/bin/sh\n# vclq guest lab: power off this guest\n" +
	"i=0\nwhile [ $i -lt 100 ]; do kill -TERM 1 || exit 1; sleep 0.1; i=$((i+1)); done\n" +
	"echo 'vclq guest lab: init did not stop' >&2\nexit 1\n"

// makeDisk builds etc, root and home afresh (no currentimage.txt yet).
func (g *Guest) makeDisk(ctx context.Context) error {
	for _, d := range []string{"root", "home", "sbin"} {
		if err := os.RemoveAll(filepath.Join(g.dir, d)); err != nil {
			return err
		}
	}
	if err := g.makeEtc(ctx); err != nil {
		return err
	}

	root := filepath.Join(g.dir, "root")
	if err := os.MkdirAll(filepath.Join(root, ".ssh"), 0o700); err != nil {
		return err
	}
	if err := os.Chmod(root, 0o700); err != nil {
		return err
	}
	for _, f := range []string{".bashrc", ".profile"} {
		if b, err := os.ReadFile(filepath.Join("/etc/skel", f)); err == nil {
			if err := os.WriteFile(filepath.Join(root, f), b, 0o644); err != nil {
				return err
			}
		}
	}
	ak := strings.Join(g.lab.keys, "\n")
	if ak != "" {
		ak += "\n"
	}
	if err := os.WriteFile(filepath.Join(root, ".ssh", "authorized_keys"), []byte(ak), 0o600); err != nil {
		return err
	}

	home := filepath.Join(g.dir, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	if _, err := run(ctx, nil, "cp", "-a", "/home/.", home); err != nil {
		return err
	}

	sbin := filepath.Join(g.dir, "sbin")
	if err := os.MkdirAll(sbin, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"shutdown", "poweroff", "halt"} {
		if err := os.WriteFile(filepath.Join(sbin, f), []byte(powerScript), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// start runs sshd as the init of new mount, UTS, IPC and PID namespaces inside the
// guest's network namespace. Called with g.mu held.
func (g *Guest) start(ctx context.Context) error {
	d := shq(g.dir)
	script := strings.Join([]string{
		"set -e",
		g.etcMount(),
		"mount --bind " + d + "/root /root",
		"mount --bind " + d + "/home /home",
		"mount --bind " + d + "/sbin /usr/local/sbin",
		"mount -t tmpfs -o mode=0755 tmpfs /run",
		"mkdir -m 0755 /run/sshd",
		": > /run/utmp",
		"hostname \"$(cat /etc/hostname)\"",
		"exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config",
	}, "\n") + "\n"
	bootFile := filepath.Join(g.dir, "boot.sh")
	if err := os.WriteFile(bootFile, []byte(script), 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(g.dir, "sshd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	ipPath, err := lookTool("ip")
	if err != nil {
		logf.Close()
		return err
	}
	cmd := exec.Command(ipPath, "netns", "exec", g.ns,
		"unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child", "--mount-proc",
		"--propagation", "private", "/bin/sh", bootFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If this process dies, the guest dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	g.cmd, g.done = cmd, done

	// The init is unshare's child; find it (it appears within milliseconds).
	var pid int
	err = wait.Until(ctx, 10*time.Second, 10*time.Millisecond, func(context.Context) (bool, error) {
		select {
		case <-done:
			return false, wait.Permanent(fmt.Errorf("guest exited at boot, see %s", filepath.Join(g.dir, "sshd.log")))
		default:
		}
		pid = childOf(cmd.Process.Pid)
		if pid == 0 {
			return false, nil
		}
		// Wait until the boot script exec'd sshd (mounts done).
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		return strings.HasSuffix(exe, "/sshd"), nil
	})
	if err != nil {
		_ = cmd.Process.Kill()
		<-done
		return err
	}
	g.initPID = pid
	return nil
}

// childOf returns a child pid of ppid, or 0.
func childOf(ppid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", ppid, ppid))
	if err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			pid, _ := strconv.Atoi(f[0])
			return pid
		}
		return 0
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(st)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 1 && f[1] == strconv.Itoa(ppid) {
				return pid
			}
		}
	}
	return 0
}

// Stop stops the guest: SIGTERM to its init (sshd), repeated, then SIGKILL after 5 s; the
// kernel kills the rest of its PID namespace. Stopping a stopped guest does nothing.
// It blocks until the guest is gone.
func (g *Guest) Stop() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.runningLocked() {
		return nil
	}
	// TERM is repeated: sshd ignores it (as a namespace init without a handler) until
	// it has set up its listener, which a guest stopped right after Boot may not have.
	term := time.NewTicker(100 * time.Millisecond)
	defer term.Stop()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	stopped := false
	for !stopped {
		if g.initPID > 0 {
			_ = syscall.Kill(g.initPID, syscall.SIGTERM)
		}
		select {
		case <-g.done:
			stopped = true
		case <-term.C:
		case <-deadline.C:
			_ = g.cmd.Process.Kill()
			select {
			case <-g.done:
				stopped = true
			case <-time.After(10 * time.Second):
				return fmt.Errorf("guestlab: guest %s: did not stop", g.name)
			}
		}
	}
	g.initPID = 0
	g.lab.log.Debug().Str("guest", g.name).Msg("guest stopped")
	return nil
}

// InitPID is the pid (in the root PID namespace) of the guest's init, for nsenter.
func (g *Guest) InitPID() (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.runningLocked() {
		return 0, fmt.Errorf("guestlab: guest %s: %w", g.name, ErrNotRunning)
	}
	return g.initPID, nil
}

// Command returns a command that runs args inside the running guest (all its
// namespaces, through nsenter), not started: for background processes.
func (g *Guest) Command(ctx context.Context, args ...string) (*exec.Cmd, error) {
	pid, err := g.InitPID()
	if err != nil {
		return nil, err
	}
	nsenter, err := lookTool("nsenter")
	if err != nil {
		return nil, err
	}
	full := append([]string{"--target", strconv.Itoa(pid), "--net", "--mount", "--uts", "--ipc", "--pid", "--"}, args...)
	cmd := exec.CommandContext(ctx, nsenter, full...)
	cmd.Env = guestEnv
	return cmd, nil
}

// guestEnv is the environment of a command run inside a guest: a root login's, not
// the caller's. With the caller's PATH a bare "shutdown" could resolve to the
// host's systemctl instead of the guest's /usr/local/sbin/shutdown.
var guestEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"USER=root",
	"LOGNAME=root",
	"LANG=C.UTF-8",
}

// Exec runs args inside the running guest with stdin (may be nil) and returns stdout;
// a failure's error carries stderr. Bounded by ctx and 30 s.
func (g *Guest) Exec(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd, err := g.Command(ctx, args...)
	if err != nil {
		return nil, err
	}
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("guestlab: guest %s: %s: %w: %s", g.name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// HostKey reads the guest's current ed25519 host public key from its disk.
func (g *Guest) HostKey() (ssh.PublicKey, error) {
	b, err := os.ReadFile(filepath.Join(g.dir, etcUpper, "ssh", "ssh_host_ed25519_key.pub"))
	if err != nil {
		return nil, fmt.Errorf("guestlab: guest %s: %w", g.name, err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, fmt.Errorf("guestlab: guest %s: %w", g.name, err)
	}
	return k, nil
}

// Log returns what the guest's sshd wrote (for test failure messages).
func (g *Guest) Log() string {
	b, err := os.ReadFile(filepath.Join(g.dir, "sshd.log"))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// Client is a bare network namespace with an address on the lab's bridge: another
// machine to connect from (a user's PC).
type Client struct {
	lab  *Lab
	name string
	ns   string
	ip   netip.Addr
}

// NewClient creates a client namespace vclq-<lab id>-<name> with the next free
// address. name is 1-20 characters of [a-z0-9-], unique in the lab.
func (l *Lab) NewClient(ctx context.Context, name string) (*Client, error) {
	if !nameRe.MatchString(name) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	addr, idx, err := l.allocate()
	if err != nil {
		return nil, err
	}
	c := &Client{lab: l, name: name, ns: l.nsName(name), ip: addr}
	if err := l.plumb(ctx, c.ns, idx, addr); err != nil {
		return nil, fmt.Errorf("guestlab: client %s: %w", name, err)
	}
	l.mu.Lock()
	l.clients = append(l.clients, c)
	l.mu.Unlock()
	return c, nil
}

// IP is the client's address.
func (c *Client) IP() netip.Addr { return c.ip }

// Netns is the client's network namespace.
func (c *Client) Netns() string { return c.ns }

// Command returns a command that runs args in the client's network namespace.
func (c *Client) Command(ctx context.Context, args ...string) *exec.Cmd {
	ip, err := lookTool("ip")
	if err != nil {
		ip = "ip"
	}
	return exec.CommandContext(ctx, ip, append([]string{"netns", "exec", c.ns}, args...)...)
}

// Exec runs args in the client's namespace and returns stdout; bounded by ctx and 30 s.
func (c *Client) Exec(ctx context.Context, args ...string) ([]byte, error) {
	return run(ctx, nil, append([]string{"ip", "netns", "exec", c.ns}, args...)...)
}

func (c *Client) killAll() {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	killNetns(ctx, c.ns)
}

// shq single-quotes s for sh (the lab's own paths only).
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// WaitListening blocks until the guest accepts TCP connections on port 22, or
// timeout (an error wrapping wait.ErrTimeout).
func (g *Guest) WaitListening(ctx context.Context, timeout time.Duration) error {
	return wait.Until(ctx, timeout, 20*time.Millisecond, func(ctx context.Context) (bool, error) {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		c, err := d.DialContext(dctx, "tcp", g.Addr())
		if err != nil {
			return false, err
		}
		c.Close()
		return true, nil
	})
}
