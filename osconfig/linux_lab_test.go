package osconfig_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/osconfig"
)

func TestWaitForResponseGuestBootsLate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	g, tg := e.guest(false)
	rec := &recorder{}
	l := e.linux(tg, rec)

	const bootAfter = 1500 * time.Millisecond
	go func() {
		time.Sleep(bootAfter)
		if err := g.Boot(context.Background(), testImage); err != nil {
			t.Errorf("boot: %v", err)
		}
	}()
	start := time.Now()
	if err := l.WaitForResponse(t.Context(), 0, 30*time.Second, 250*time.Millisecond); err != nil {
		t.Fatalf("WaitForResponse: %v\n%s", err, g.Log())
	}
	if took := time.Since(start); took < bootAfter {
		t.Fatalf("WaitForResponse returned after %s, before the guest booted (%s)", took, bootAfter)
	}
	s, ok := rec.find(messages.LoadMachineBooted)
	if !ok || !regexp.MustCompile(`responded to SSH after [0-9.]+m?s`).MatchString(s.info) {
		t.Fatalf("no machinebooted step with the elapsed time: %+v", rec.all())
	}
	if e.dialer.n.Load() < 3 {
		t.Fatalf("only %d dials: the wait did not poll", e.dialer.n.Load())
	}
}

func TestWaitForResponseNeverUp(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, tg := e.guest(false)
	rec := &recorder{}
	l := e.linux(tg, rec)
	start := time.Now()
	err := l.WaitForResponse(t.Context(), 200*time.Millisecond, 1500*time.Millisecond, 250*time.Millisecond)
	took := time.Since(start)
	if !errors.Is(err, osconfig.ErrNotResponding) || !errors.Is(err, wait.ErrTimeout) {
		t.Fatalf("WaitForResponse = %v, want ErrNotResponding and wait.ErrTimeout", err)
	}
	if took > 5*time.Second {
		t.Fatalf("bounded wait took %s", took)
	}
	msg := err.Error()
	if !regexp.MustCompile(`not responding after [0-9.]+m?s .*\d+ attempts`).MatchString(err.Error()) {
		t.Errorf("error %q does not state the elapsed time and attempts", err)
	}
	for _, want := range []string{tg.Slot, tg.IP, "port 22"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if _, ok := rec.find(messages.LoadMachineBooted); ok {
		t.Fatal("machinebooted reported for a guest that never answered")
	}
}

// rootHash is root's password hash, read inside the guest.
func rootHash(t *testing.T, g interface {
	Exec(context.Context, []byte, ...string) ([]byte, error)
}) string {
	t.Helper()
	out, err := g.Exec(context.Background(), nil, "getent", "shadow", "root")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(out), ":")[1]
}

func TestPostLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	g1, t1 := e.guest(true)
	g2, t2 := e.guest(true)
	before := rootHash(t, g1)
	// A private key left in the image, and the host keys that must stay.
	gexec(t, g1, "sh", "-c", "echo secret > /root/.ssh/id_rsa && echo pub > /root/.ssh/id_rsa.pub && echo k > /root/.ssh/id_ed25519")

	rec := &recorder{}
	for _, tg := range []osconfig.Target{t1, t2} {
		if err := e.linux(tg, rec).PostLoad(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	h1, h2 := rootHash(t, g1), rootHash(t, g2)
	if h1 == before || !strings.HasPrefix(h1, "$") {
		t.Fatalf("root hash not changed to a real hash: before %q after %q", before, h1)
	}
	if h1 == h2 {
		t.Fatal("two guests got the same root password hash")
	}

	// Firewall, as iptables-save and nft see it inside the guest's namespace.
	save := netnsExec(t, g1, "iptables-save", "-t", "filter")
	mgmt := e.lab.HostIP().String()
	for _, want := range []string{
		"-A INPUT -j VCLQ",
		"-A VCLQ -s " + mgmt + "/32 -m comment --comment \"vclq management node\" -j ACCEPT",
		"-A VCLQ -p tcp -m tcp --dport 22 -m comment --comment \"vclq ssh\" -j ACCEPT",
		"-A VCLQ -m comment --comment \"vclq default deny\" -j DROP",
	} {
		if !strings.Contains(save, want) {
			t.Errorf("iptables-save lacks %q:\n%s", want, save)
		}
	}
	nft := netnsExec(t, g1, "nft", "list", "chain", "ip", "filter", "VCLQ")
	if !strings.Contains(nft, "ip saddr "+mgmt) || !strings.Contains(nft, "tcp dport 22") || !strings.Contains(nft, "drop") {
		t.Errorf("nft VCLQ chain:\n%s", nft)
	}

	// Tag, host name, keys.
	cur := gexec(t, g1, "cat", "/root/currentimage.txt")
	if !strings.HasPrefix(cur, testImage.Name+"\n") || !regexp.MustCompile(`(?m)^vcld_post_load=success \(`).MatchString(cur) {
		t.Fatalf("currentimage.txt:\n%s", cur)
	}
	if got := strings.TrimSpace(gexec(t, g1, "hostname")); got != t1.Hostname {
		t.Errorf("hostname %q, want %q", got, t1.Hostname)
	}
	if got := strings.TrimSpace(gexec(t, g1, "cat", "/etc/hostname")); got != t1.Hostname {
		t.Errorf("/etc/hostname %q, want %q", got, t1.Hostname)
	}
	if out := gexec(t, g1, "sh", "-c", "ls /root/.ssh/; ls /etc/ssh/ssh_host_ed25519_key"); strings.Contains(out, "id_") ||
		!strings.Contains(out, "authorized_keys") || !strings.Contains(out, "ssh_host_ed25519_key") {
		t.Errorf("after clearing private keys: %q", out)
	}
	if s, ok := rec.find(messages.LoadInfo); !ok || !strings.Contains(s.info, "post_load") {
		t.Errorf("no post_load info step: %+v", rec.all())
	}
	for _, s := range rec.all() {
		if strings.Contains(s.info, "$") {
			t.Errorf("a step looks like it carries a hash: %q", s.info)
		}
	}

	// Idempotent: a second run leaves one jump, the same chain, one tag, and removes a
	// stale exception left in the chain.
	netnsExec(t, g1, "iptables", "-I", "VCLQ", "1", "-s", "198.51.100.99/32", "-j", "ACCEPT")
	if err := e.linux(t1, nil).PostLoad(t.Context()); err != nil {
		t.Fatal(err)
	}
	save2 := netnsExec(t, g1, "iptables-save", "-t", "filter")
	if n := strings.Count(save2, "-A INPUT -j VCLQ"); n != 1 {
		t.Errorf("%d INPUT jumps after a second post_load", n)
	}
	if strings.Contains(save2, "198.51.100.99") {
		t.Errorf("stale rule survived post_load:\n%s", save2)
	}
	if strings.Count(save2, "-A VCLQ") != strings.Count(save, "-A VCLQ") {
		t.Errorf("chain changed on a second post_load:\n%s\n---\n%s", save, save2)
	}
	if n := strings.Count(gexec(t, g1, "cat", "/root/currentimage.txt"), "vcld_post_load="); n != 1 {
		t.Errorf("%d post_load tags", n)
	}

	// node_status agrees.
	st, err := e.linux(t1, nil).NodeStatus(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	img := messages.Image{Name: testImage.Name, RevisionID: testImage.RevisionID}
	if st.ImageName != testImage.Name || st.RevisionID != testImage.RevisionID || !st.PostLoad || st.For(img) != osconfig.Ready {
		t.Fatalf("NodeStatus = %+v (%s)", st, st.For(img))
	}
}

func TestAddUserCanLogIn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	g, tg := e.guest(true)
	dir := t.TempDir()
	aliceKey, alicePub := writeKey(dir, "alice")
	bobKey, bobPub := writeKey(dir, "bob")
	rec := &recorder{}
	var logs testutil.SyncBuffer
	logger := zerolog.New(&logs).Level(zerolog.DebugLevel)
	lc, err := osconfig.New(osconfig.Config{KeyFile: mgmtKey, KnownHostsFile: e.known, Logger: &logger})
	if err != nil {
		t.Fatal(err)
	}
	l, err := lc.Linux(tg, rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.PostLoad(t.Context()); err != nil {
		t.Fatal(err)
	}
	users := []osconfig.User{
		{Login: "alice", UID: 20001, SSHKeys: []string{alicePub}, RootAccess: true},
		{Login: "bob", SSHKeys: []string{bobPub}, Password: osconfig.Secret("Given-pass-123")},
	}
	creds, err := l.AddUsers(t.Context(), users)
	if err != nil {
		t.Fatal(err)
	}
	if len(creds) != 2 || len(creds[0].Password.Reveal()) < 15 || creds[1].Password.Reveal() != "Given-pass-123" {
		t.Fatalf("credentials: %d, lengths %d", len(creds), len(creds[0].Password.Reveal()))
	}
	if s, ok := rec.find(messages.LoadAddingUser); !ok || !strings.Contains(s.info, "alice") {
		t.Fatalf("no addinguser step: %+v", rec.all())
	}
	// Passwords reach neither the log (debug level) nor progress.
	if !strings.Contains(logs.String(), `"command":"chpasswd"`) {
		t.Fatalf("debug log does not show commands, so this check proves nothing:\n%s", logs.String())
	}
	for _, c := range creds {
		if strings.Contains(logs.String(), c.Password.Reveal()) {
			t.Fatalf("password of %s in the log", c.Login)
		}
		for _, st := range rec.all() {
			if strings.Contains(st.info, c.Password.Reveal()) {
				t.Fatalf("password of %s in progress", c.Login)
			}
		}
	}

	// Inside the guest: the account as asked.
	pw := strings.Split(strings.TrimSpace(gexec(t, g, "getent", "passwd", "alice")), ":")
	grp := strings.Split(strings.TrimSpace(gexec(t, g, "getent", "group", "vcl")), ":")
	if pw[2] != "20001" || pw[3] != grp[2] || pw[5] != "/home/alice" || pw[6] != "/bin/bash" {
		t.Fatalf("passwd alice = %v (group vcl %v)", pw, grp)
	}
	if got := gexec(t, g, "cat", "/etc/sudoers.d/vclq-alice"); got != "alice ALL=(ALL) NOPASSWD: ALL\n" {
		t.Fatalf("sudoers: %q", got)
	}
	if _, err := g.Exec(t.Context(), nil, "test", "-e", "/etc/sudoers.d/vclq-bob"); err == nil {
		t.Fatal("bob got a sudoers entry without root access")
	}
	if h := strings.Split(gexec(t, g, "getent", "shadow", "alice"), ":")[1]; !strings.HasPrefix(h, "$") {
		t.Fatalf("alice's password not set: %q", h)
	}
	if st := gexec(t, g, "stat", "-c", "%U %a", "/home/alice/.ssh/authorized_keys"); st != "alice 600\n" {
		t.Fatalf("authorized_keys owner/mode %q", st)
	}

	// The real test: alice logs in with her key, bob with his; not with each other's.
	out, err := sshFrom(nil, aliceKey, "alice", tg.IP, "id", "-un")
	if err != nil || strings.TrimSpace(out) != "alice" {
		t.Fatalf("ssh alice: %q, %v\n%s", out, err, g.Log())
	}
	if out, err := sshFrom(nil, bobKey, "bob", tg.IP, "id", "-un"); err != nil || strings.TrimSpace(out) != "bob" {
		t.Fatalf("ssh bob: %q, %v", out, err)
	}
	if _, err := sshFrom(nil, bobKey, "alice", tg.IP, "true"); err == nil {
		t.Fatal("bob's key logs in as alice")
	}

	// Idempotent: again, with root access revoked for alice.
	users[0].RootAccess = false
	if _, err := l.AddUsers(t.Context(), users); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Exec(t.Context(), nil, "test", "-e", "/etc/sudoers.d/vclq-alice"); err == nil {
		t.Fatal("sudoers entry kept after root access was revoked")
	}
	if n := len(regexp.MustCompile(`(?m)^alice:`).FindAllString(gexec(t, g, "getent", "passwd"), -1)); n != 1 {
		t.Fatalf("%d alice accounts", n)
	}
}

func TestGrantAccessOnlyFromRemoteIP(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	g, tg := e.guest(true)
	ctx := t.Context()
	allowed, err := e.lab.NewClient(ctx, "pc-allowed")
	if err != nil {
		t.Fatal(err)
	}
	other, err := e.lab.NewClient(ctx, "pc-other")
	if err != nil {
		t.Fatal(err)
	}
	key, pub := writeKey(t.TempDir(), "carol")
	l := e.linux(tg, nil)
	if err := l.PostLoad(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddUsers(ctx, []osconfig.User{{Login: "carol", SSHKeys: []string{pub}}}); err != nil {
		t.Fatal(err)
	}
	// Before grant_access SSH is open to all: the other PC can log in (so the failure
	// below is the firewall's doing, not a broken client).
	if out, err := sshFrom(other, key, "carol", tg.IP, "true"); err != nil {
		t.Fatalf("before grant_access, ssh from %s: %v %s", other.IP(), err, out)
	}
	if err := l.GrantAccess(ctx, allowed.IP().String()); err != nil {
		t.Fatal(err)
	}
	if out, err := sshFrom(allowed, key, "carol", tg.IP, "id", "-un"); err != nil || strings.TrimSpace(out) != "carol" {
		t.Fatalf("ssh from allowed %s: %q %v", allowed.IP(), out, err)
	}
	if out, err := sshFrom(other, key, "carol", tg.IP, "true"); err == nil {
		t.Fatalf("ssh from %s succeeded after grant_access to %s: %s", other.IP(), allowed.IP(), out)
	}
	save := netnsExec(t, g, "iptables-save", "-t", "filter")
	if !strings.Contains(save, "-A VCLQ -s "+allowed.IP().String()+"/32 -p tcp -m tcp --dport 22") ||
		strings.Contains(save, "\"vclq ssh\"") {
		t.Fatalf("iptables after grant_access:\n%s", save)
	}
	// The management node keeps access.
	if _, err := e.linux(tg, nil).NodeStatus(ctx); err != nil {
		t.Fatalf("management node lost access: %v", err)
	}
}

func TestSanitize(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	g, tg := e.guest(true)
	ctx := t.Context()
	pc, err := e.lab.NewClient(ctx, "pc-sanitize")
	if err != nil {
		t.Fatal(err)
	}
	key, pub := writeKey(t.TempDir(), "dave")
	rec := &recorder{}
	l := e.linux(tg, rec)
	if err := l.PostLoad(ctx); err != nil {
		t.Fatal(err)
	}
	users := []osconfig.User{{Login: "dave", SSHKeys: []string{pub}, RootAccess: true}, {Login: "erin"}}
	if _, err := l.AddUsers(ctx, users); err != nil {
		t.Fatal(err)
	}
	if err := l.GrantAccess(ctx, pc.IP().String()); err != nil {
		t.Fatal(err)
	}

	// A real session: dave logged in over SSH from his PC, with a terminal.
	sctx, stop := context.WithCancel(ctx)
	args := sshArgs(key, "dave", tg.IP, "sleep", "120")
	session := pc.Command(sctx, append([]string{args[0], "-tt"}, args[1:]...)...)
	if err := session.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stop(); session.Wait() }()
	waitFor(t, "dave's session", func() bool {
		_, err := g.Exec(ctx, nil, "pgrep", "-u", "dave", "sleep")
		return err == nil
	})
	in, err := l.LoggedInUsers(ctx)
	if err != nil || len(in) != 1 || in[0] != "dave" {
		t.Fatalf("LoggedInUsers = %v, %v", in, err)
	}
	err = l.Sanitize(ctx, []string{"dave", "erin"})
	if !errors.Is(err, osconfig.ErrUserLoggedIn) || !strings.Contains(err.Error(), "dave") {
		t.Fatalf("Sanitize with dave logged in = %v", err)
	}
	gexec(t, g, "id", "dave") // still there

	stop()
	session.Wait()
	waitFor(t, "dave's session to end", func() bool {
		_, err := g.Exec(ctx, nil, "pgrep", "-u", "dave")
		return err != nil
	})
	// A leftover vcl user from an earlier reservation is removed too.
	gexec(t, g, "useradd", "-m", "-g", "vcl", "stale")
	for i := range 2 { // twice: the second run is harmless
		if err := l.Sanitize(ctx, []string{"dave", "erin"}); err != nil {
			t.Fatalf("Sanitize #%d: %v", i+1, err)
		}
	}
	passwd := gexec(t, g, "getent", "passwd")
	for _, u := range []string{"dave", "erin", "stale"} {
		if strings.Contains(passwd, "\n"+u+":") || strings.HasPrefix(passwd, u+":") {
			t.Errorf("user %s still in passwd", u)
		}
		if _, err := os.Stat(filepath.Join(g.Dir(), "home", u)); !os.IsNotExist(err) {
			t.Errorf("home of %s left: %v", u, err)
		}
	}
	if p, ok := g.DiskFile("/etc/sudoers.d/vclq-dave"); ok {
		t.Errorf("sudoers entry left: %s", p)
	}
	save := netnsExec(t, g, "iptables-save", "-t", "filter")
	if strings.Contains(save, pc.IP().String()) || !strings.Contains(save, "\"vclq ssh\"") {
		t.Fatalf("firewall exception not removed:\n%s", save)
	}
	if s, ok := rec.find(messages.LoadInfo); !ok || s.info == "" {
		t.Fatalf("steps: %+v", rec.all())
	}
}

func TestTaintAndPreCapture(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	g, tg := e.guest(true)
	ctx := t.Context()
	l := e.linux(tg, nil)
	if err := l.PostLoad(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddUsers(ctx, []osconfig.User{{Login: "frank"}}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := l.Taint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cur := gexec(t, g, "cat", "/root/currentimage.txt")
	if strings.Count(cur, "vcld_tainted=") != 1 {
		t.Fatalf("currentimage.txt after Taint twice:\n%s", cur)
	}
	st, err := l.NodeStatus(ctx)
	if err != nil || !st.Tainted || st.For(messages.Image{Name: testImage.Name, RevisionID: testImage.RevisionID}) != osconfig.Reload {
		t.Fatalf("NodeStatus = %+v, %v", st, err)
	}

	if err := l.PreCapture(ctx, []string{"frank"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the guest to power off", func() bool { return !g.Running() })
	disk, err := os.ReadFile(filepath.Join(g.Dir(), "root", "currentimage.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(disk), "vcld_") || !strings.HasPrefix(string(disk), testImage.Name+"\n") {
		t.Fatalf("captured currentimage.txt:\n%s", disk)
	}
	passwd, ok := g.DiskFile("/etc/passwd")
	if !ok {
		t.Fatal("captured disk has no /etc/passwd")
	}
	if b, _ := os.ReadFile(passwd); strings.Contains(string(b), "frank:") {
		t.Fatal("captured disk still has the user")
	}
}

func TestHostKeyChangedIsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	g, tg := e.guest(true)
	ctx := t.Context()
	l := e.linux(tg, nil)
	if _, err := l.NodeStatus(ctx); err != nil { // first contact records the key
		t.Fatal(err)
	}
	k1, _ := g.HostKey()
	known, _ := os.ReadFile(e.known)
	if !strings.Contains(string(known), tg.IP+" ssh-ed25519 ") || !strings.Contains(string(known), strings.Fields(string(sshAuthorized(k1)))[1]) {
		t.Fatalf("known_hosts after first contact:\n%s", known)
	}

	// The VM is re-imaged behind our back: a new host key, no load of ours.
	if err := g.Reimage(); err != nil {
		t.Fatal(err)
	}
	if err := g.Boot(ctx, testImage); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitListening(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := l.NodeStatus(ctx); !errors.Is(err, osconfig.ErrHostKeyChanged) {
		t.Fatalf("NodeStatus with a changed key = %v, want ErrHostKeyChanged", err)
	}
	start := time.Now()
	if err := l.WaitForResponse(ctx, 0, 20*time.Second, 200*time.Millisecond); !errors.Is(err, osconfig.ErrHostKeyChanged) {
		t.Fatalf("WaitForResponse with a changed key = %v", err)
	} else if time.Since(start) > 5*time.Second {
		t.Fatal("WaitForResponse kept retrying a changed host key")
	}
	if after, _ := os.ReadFile(e.known); string(after) != string(known) {
		t.Fatal("known_hosts changed by a refused key")
	}

	// Our own load re-imaged it: the new key is accepted once, then enforced.
	e.client.ExpectNewHostKey(tg.Slot)
	if _, err := l.NodeStatus(ctx); err != nil {
		t.Fatalf("after ExpectNewHostKey: %v", err)
	}
	if e.client.NewHostKeyExpected(tg.Slot) {
		t.Fatal("rekey allowance not used up by the changed key")
	}
	k2, _ := g.HostKey()
	if after, _ := os.ReadFile(e.known); !strings.Contains(string(after), strings.Fields(string(sshAuthorized(k2)))[1]) ||
		strings.Contains(string(after), strings.Fields(string(sshAuthorized(k1)))[1]) {
		t.Fatalf("known_hosts after rekey:\n%s", after)
	}
	if err := g.Reimage(); err != nil {
		t.Fatal(err)
	}
	if err := g.Boot(ctx, testImage); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitListening(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := l.NodeStatus(ctx); !errors.Is(err, osconfig.ErrHostKeyChanged) {
		t.Fatalf("a second change without a load = %v, want ErrHostKeyChanged", err)
	}
}
