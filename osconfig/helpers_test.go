package osconfig_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/vclq/vclq/internal/guestlab"
	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/osconfig"
)

// One lab (bridge + subnet) for the whole test binary; each test makes its own guests.
var (
	labOnce  sync.Once
	labErr   error
	shared   *guestlab.Lab
	mgmtKey  string // private key file of the "management node"
	mgmtPub  string
	keysDir  string
	guestSeq atomic.Int32
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.Close()
	}
	if keysDir != "" {
		os.RemoveAll(keysDir)
	}
	os.Exit(code)
}

// lab returns the shared lab, or skips the test with the reason.
func lab(t *testing.T) *guestlab.Lab {
	t.Helper()
	if err := guestlab.Check(); err != nil {
		if os.Getenv("VCLQ_REQUIRE_GUESTLAB") == "1" {
			t.Fatalf("guest lab required: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	labOnce.Do(func() {
		keysDir, labErr = os.MkdirTemp("", "vclq-osconfig-test-")
		if labErr != nil {
			return
		}
		mgmtKey, mgmtPub = writeKey(keysDir, "mgmt")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		shared, labErr = guestlab.New(ctx, guestlab.Config{SubnetBits: 26, AuthorizedKeys: []string{mgmtPub}})
	})
	if labErr != nil {
		t.Fatalf("guest lab: %v", labErr)
	}
	return shared
}

// writeKey writes an ed25519 private key file (0600) and returns its path and the
// public key's authorized_keys line.
func writeKey(dir, name string) (string, string) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		panic(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		panic(err)
	}
	spub, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return path, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spub))) + " " + name + "@test"
}

type countingDialer struct {
	n      atomic.Int32
	refuse bool // count, but never open a socket
	d      net.Dialer
}

func (c *countingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c.n.Add(1)
	if c.refuse {
		return nil, errors.New("test dialer: connections are not allowed here")
	}
	return c.d.DialContext(ctx, network, addr)
}

type step struct{ name, info string }

type recorder struct {
	mu    sync.Mutex
	steps []step
}

func (r *recorder) Step(name, info string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps = append(r.steps, step{name, info})
}

func (r *recorder) find(name string) (step, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.steps {
		if s.name == name {
			return s, true
		}
	}
	return step{}, false
}

func (r *recorder) all() []step {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]step(nil), r.steps...)
}

// env is one test's client (own known_hosts) and helpers.
type env struct {
	t      *testing.T
	lab    *guestlab.Lab
	client *osconfig.Client
	dialer *countingDialer
	known  string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	l := lab(t)
	e := &env{t: t, lab: l, dialer: &countingDialer{}, known: filepath.Join(t.TempDir(), "known_hosts")}
	c, err := osconfig.New(osconfig.Config{
		KeyFile: mgmtKey, KnownHostsFile: e.known, Dialer: e.dialer,
		DialTimeout: 5 * time.Second, CommandTimeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.client = c
	return e
}

var testImage = guestlab.ImageInfo{Name: "vmwarelinux-rhel9-v3", ID: 42, RevisionID: 420, ComputerID: 9}

// guest creates a guest (booted unless boot is false) and its target.
func (e *env) guest(boot bool) (*guestlab.Guest, osconfig.Target) {
	e.t.Helper()
	name := fmt.Sprintf("g%d", guestSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g, err := e.lab.NewGuest(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { g.Stop() })
	if boot {
		if err := g.Boot(ctx, testImage); err != nil {
			e.t.Fatal(err)
		}
		if err := g.WaitListening(ctx, 20*time.Second); err != nil {
			e.t.Fatalf("%v\n%s", err, g.Log())
		}
	}
	return g, osconfig.Target{
		Slot: "vclv" + name, IP: g.IP().String(), Hostname: "vclv" + name + ".example.edu",
		ManagementIP: e.lab.HostIP().String(),
	}
}

func (e *env) linux(tg osconfig.Target, p osconfig.Progress) *osconfig.Linux {
	e.t.Helper()
	l, err := e.client.Linux(tg, p)
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

// gexec runs a command inside the guest (nsenter), independent of osconfig.
func gexec(t *testing.T, g *guestlab.Guest, args ...string) string {
	t.Helper()
	out, err := g.Exec(context.Background(), nil, args...)
	if err != nil {
		t.Fatalf("in guest: %v", err)
	}
	return string(out)
}

// netnsExec runs a command in the guest's network namespace only (ip netns exec), the
// way an operator checks firewall state.
func netnsExec(t *testing.T, g *guestlab.Guest, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", g.Netns()}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec %s %v: %v: %s", g.Netns(), args, err, out)
	}
	return string(out)
}

// sshArgs is an OpenSSH client command line (the real ssh binary, not our code).
func sshArgs(key, user, ip string, remote ...string) []string {
	return append([]string{"ssh", "-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3",
		"-o", "LogLevel=ERROR", user + "@" + ip}, remote...)
}

// sshFrom runs ssh from client c's namespace (nil: the root namespace, i.e. the
// management node's address).
func sshFrom(c *guestlab.Client, key, user, ip string, remote ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	args := sshArgs(key, user, ip, remote...)
	var cmd *exec.Cmd
	if c == nil {
		cmd = exec.CommandContext(ctx, args[0], args[1:]...)
	} else {
		cmd = c.Command(ctx, args...)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	err := wait.Until(context.Background(), 15*time.Second, 50*time.Millisecond, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func sshAuthorized(k ssh.PublicKey) []byte { return ssh.MarshalAuthorizedKey(k) }
