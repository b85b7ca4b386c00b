package guestlab_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/internal/guestlab"
	"github.com/vclq/vclq/internal/wait"
)

var img = guestlab.ImageInfo{Name: "vmwarelinux-base-v1", ID: 7, RevisionID: 70, ComputerID: 3}

func TestGuestLifecycle(t *testing.T) {
	lab := guestlab.NewForTest(t, guestlab.Config{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if !lab.Subnet().Contains(lab.HostIP()) {
		t.Fatalf("host IP %s outside subnet %s", lab.HostIP(), lab.Subnet())
	}
	g := guestlab.NewGuestForTest(t, lab, "g1", img)
	if !lab.Subnet().Contains(g.IP()) || g.IP() == lab.HostIP() {
		t.Fatalf("guest IP %s not a host of %s", g.IP(), lab.Subnet())
	}

	// Private UTS and /etc: writing inside does not touch the host.
	hostName, _ := os.Hostname()
	if _, err := g.Exec(ctx, nil, "sh", "-c", "hostname vclq-lab-test && echo marker > /etc/vclq-lab-marker"); err != nil {
		t.Fatal(err)
	}
	if now, _ := os.Hostname(); now != hostName {
		t.Fatalf("host name changed to %q", now)
	}
	if _, err := os.Stat("/etc/vclq-lab-marker"); err == nil {
		os.Remove("/etc/vclq-lab-marker")
		t.Fatal("a file written to the guest's /etc appeared on the host")
	}
	// The disk as the guest sees it, read from outside: a written file, a deleted
	// one (a whiteout over the template), an untouched one.
	if _, err := g.Exec(ctx, nil, "rm", "/etc/issue"); err != nil {
		t.Fatal(err)
	}
	if p, ok := g.DiskFile("/etc/vclq-lab-marker"); !ok {
		t.Error("DiskFile misses a file the guest wrote")
	} else if b, _ := os.ReadFile(p); string(b) != "marker\n" {
		t.Errorf("DiskFile(/etc/vclq-lab-marker) = %q", b)
	}
	if p, ok := g.DiskFile("/etc/issue"); ok {
		t.Errorf("DiskFile finds /etc/issue the guest deleted: %s", p)
	}
	if _, err := os.Stat("/etc/issue"); err != nil {
		t.Errorf("deleting the guest's /etc/issue touched the host's: %v", err)
	}
	if _, ok := g.DiskFile("/etc/passwd"); !ok {
		t.Error("DiskFile misses /etc/passwd")
	}
	out, err := g.Exec(ctx, nil, "cat", "/root/currentimage.txt")
	if err != nil || !strings.HasPrefix(string(out), img.Name+"\nid=7\nimagerevision_id=70\n") {
		t.Fatalf("currentimage.txt = %q, %v", out, err)
	}
	// Own network namespace with the guest's address; own PID namespace.
	out, err = exec.CommandContext(ctx, "ip", "netns", "exec", g.Netns(), "ip", "-4", "-o", "addr", "show", "dev", "eth0").Output()
	if err != nil || !strings.Contains(string(out), g.IP().String()+"/") {
		t.Fatalf("eth0 in %s: %q, %v", g.Netns(), out, err)
	}
	out, err = g.Exec(ctx, nil, "ps", "-o", "pid=,comm=", "-p", "1")
	if err != nil || !strings.Contains(string(out), "sshd") {
		t.Fatalf("guest pid 1: %q, %v", out, err)
	}

	k1, err := g.HostKey()
	if err != nil {
		t.Fatal(err)
	}
	// Reboot keeps the disk (the marker and host key survive).
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	if g.Running() {
		t.Fatal("Running after Stop")
	}
	if _, err := g.Exec(ctx, nil, "true"); !errors.Is(err, guestlab.ErrNotRunning) {
		t.Fatalf("Exec on stopped guest = %v", err)
	}
	if err := g.Boot(ctx, img); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Exec(ctx, nil, "test", "-f", "/etc/vclq-lab-marker"); err != nil {
		t.Fatalf("reboot lost the disk: %v", err)
	}
	// Reimage: a fresh disk and a new host key.
	if err := g.Reimage(); err != nil {
		t.Fatal(err)
	}
	if err := g.Boot(ctx, img); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Exec(ctx, nil, "test", "-f", "/etc/vclq-lab-marker"); err == nil {
		t.Fatal("reimaged disk kept the marker")
	}
	k2, err := g.HostKey()
	if err != nil {
		t.Fatal(err)
	}
	if string(k1.Marshal()) == string(k2.Marshal()) {
		t.Fatal("reimage kept the host key")
	}
	// shutdown inside the guest stops it.
	_, _ = g.Exec(ctx, nil, "sh", "-c", "shutdown -h now")
	if err := waitFor(func() bool { return !g.Running() }); err != nil {
		t.Fatal("guest still running after shutdown")
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	if err := guestlab.Check(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	lab, err := guestlab.New(ctx, guestlab.Config{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := lab.NewGuest(ctx, "gone")
	if err != nil {
		lab.Close()
		t.Fatal(err)
	}
	if err := g.Boot(ctx, img); err != nil {
		lab.Close()
		t.Fatal(err)
	}
	c, err := lab.NewClient(ctx, "pc")
	if err != nil {
		lab.Close()
		t.Fatal(err)
	}
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	ns, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(ns), g.Netns()) || strings.Contains(string(ns), c.Netns()) {
		t.Fatalf("namespaces left: %s", ns)
	}
	if err := exec.Command("ip", "link", "show", lab.Bridge()).Run(); err == nil {
		t.Fatalf("bridge %s left", lab.Bridge())
	}
	if _, err := os.Stat(g.Dir()); !os.IsNotExist(err) {
		t.Fatalf("guest dir left: %v", err)
	}
}

func TestTwoLabsGetDisjointSubnets(t *testing.T) {
	a := guestlab.NewForTest(t, guestlab.Config{})
	b := guestlab.NewForTest(t, guestlab.Config{})
	if a.Subnet().Overlaps(b.Subnet()) || a.Bridge() == b.Bridge() {
		t.Fatalf("labs collide: %s %s / %s %s", a.Bridge(), a.Subnet(), b.Bridge(), b.Subnet())
	}
	// A configured subnet that is taken is refused.
	_, err := guestlab.New(t.Context(), guestlab.Config{Subnet: a.Subnet()})
	if !errors.Is(err, guestlab.ErrNoSubnet) {
		t.Fatalf("New on a taken subnet = %v, want ErrNoSubnet", err)
	}
}

func waitFor(cond func() bool) error {
	return wait.Until(context.Background(), 10*time.Second, 20*time.Millisecond, func(context.Context) (bool, error) {
		return cond(), nil
	})
}
