package osconfig_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vclq/vclq/osconfig"
)

// Hostile values are rejected before any connection: the dialer is never called.
// No guest lab needed: nothing may be dialled at all.
func TestHostileInputRejectedBeforeAnyConnection(t *testing.T) {
	dir := t.TempDir()
	key, pub := writeKey(dir, "mgmt")
	dialer := &countingDialer{refuse: true} // never opens a socket
	c, err := osconfig.New(osconfig.Config{KeyFile: key, KnownHostsFile: filepath.Join(dir, "known_hosts"), Dialer: dialer})
	if err != nil {
		t.Fatal(err)
	}
	good := osconfig.Target{Slot: "vclv1", IP: "198.51.100.250", Hostname: "vclv1.example.edu", ManagementIP: "198.51.100.1"}

	hostileNames := []string{
		"a;reboot", "$(reboot)", "`reboot`", "a'b", `a"b`, "a\nb", "a b", "-rf", "../etc", "Alice",
		"", strings.Repeat("a", 33), "a|b", "a&b", "a>b", "a\\b", "root", "vcl",
	}
	hostileKeys := []string{
		pub + "; rm -rf /",
		pub + " $(id)",
		pub + " `id`",
		pub + "\n" + pub,
		pub + " it's",
		`command="/bin/sh" ` + pub,
		"ssh-ed25519 AAAA'$(id)'",
		"",
	}
	hostileHosts := []string{"h;reboot", "h$(id)", "h`id`", "h'x", "h\nx", `h"x`, "h x", "-h"}
	hostileIPs := []string{"198.51.100.1; reboot", "$(id)", "198.51.100.1\n", "'198.51.100.1'", "198.51.100.0/24", "", "0.0.0.0"}

	type op struct {
		name string
		run  func(ctx context.Context) error
	}
	var ops []op
	for _, os := range []string{"linux", "windows"} {
		g, err := c.Guest(good, os, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range hostileNames {
			ops = append(ops,
				op{os + " add user " + n, func(ctx context.Context) error {
					_, err := g.AddUsers(ctx, []osconfig.User{{Login: n}})
					return err
				}},
				op{os + " sanitize " + n, func(ctx context.Context) error { return g.Sanitize(ctx, []string{"alice", n}) }},
				op{os + " pre-capture " + n, func(ctx context.Context) error { return g.PreCapture(ctx, []string{n}) }},
			)
		}
		for _, k := range hostileKeys {
			ops = append(ops, op{os + " key " + k, func(ctx context.Context) error {
				_, err := g.AddUsers(ctx, []osconfig.User{{Login: "alice", SSHKeys: []string{pub, k}}})
				return err
			}})
		}
		for _, ip := range hostileIPs {
			ops = append(ops, op{os + " grant " + ip, func(ctx context.Context) error { return g.GrantAccess(ctx, ip) }})
		}
		for _, pw := range []string{"short", "has:colon-123", "new\nline-1234", "tab\there-1234", "p\u00e4sswort-1234"} {
			ops = append(ops, op{os + " password " + pw, func(ctx context.Context) error {
				_, err := g.AddUsers(ctx, []osconfig.User{{Login: "alice", Password: osconfig.Secret(pw)}})
				return err
			}})
		}
		for _, h := range hostileHosts {
			bad := good
			bad.Hostname = h
			ops = append(ops, op{os + " hostname " + h, func(ctx context.Context) error {
				_, err := c.Guest(bad, os, nil)
				return err
			}})
		}
		for _, ip := range hostileIPs {
			bad, badMgmt := good, good
			bad.IP, badMgmt.ManagementIP = ip, ip
			ops = append(ops, op{os + " target ip " + ip, func(ctx context.Context) error {
				_, err := c.Guest(bad, os, nil)
				return err
			}})
			if ip != "" { // an empty management IP is only refused by the operations that need it
				ops = append(ops, op{os + " management ip " + ip, func(ctx context.Context) error {
					_, err := c.Guest(badMgmt, os, nil)
					return err
				}})
			}
		}
		for _, s := range []string{"slot;x", "$(id)", "a'b", ""} {
			bad := good
			bad.Slot = s
			ops = append(ops, op{os + " slot " + s, func(ctx context.Context) error {
				_, err := c.Guest(bad, os, nil)
				return err
			}})
		}
		noMgmt := good
		noMgmt.ManagementIP = ""
		gm, err := c.Guest(noMgmt, os, nil)
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops,
			op{os + " post-load without management ip", gm.PostLoad},
			op{os + " grant without management ip", func(ctx context.Context) error { return gm.GrantAccess(ctx, "198.51.100.7") }},
		)
	}
	for _, o := range ops {
		t.Run(o.name, func(t *testing.T) {
			before := dialer.n.Load()
			err := o.run(t.Context())
			if !errors.Is(err, osconfig.ErrInvalidInput) {
				t.Fatalf("err = %v, want ErrInvalidInput", err)
			}
			if n := dialer.n.Load() - before; n != 0 {
				t.Fatalf("%d connections made for invalid input", n)
			}
		})
	}
	if dialer.n.Load() != 0 {
		t.Fatalf("%d dials in all", dialer.n.Load())
	}
}

// A password never appears in an error or a formatted value.
func TestSecretRedacted(t *testing.T) {
	s := osconfig.Secret("hunter2-hunter2")
	for _, got := range []string{s.String(), fmtAll(s), errors.New("x " + s.String()).Error()} {
		if strings.Contains(got, "hunter2") {
			t.Fatalf("secret leaked: %q", got)
		}
	}
	b, _ := s.MarshalText()
	if string(b) != "[redacted]" || s.Reveal() != "hunter2-hunter2" {
		t.Fatalf("MarshalText %q, Reveal %q", b, s.Reveal())
	}
	seen := map[string]bool{}
	for range 50 {
		p, err := osconfig.NewPassword()
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Reveal()) < 15 || strings.ContainsAny(p.Reveal(), ":'\"\\ \n$`") || seen[p.Reveal()] {
			t.Fatalf("bad or repeated password %q", p.Reveal())
		}
		seen[p.Reveal()] = true
	}
}

func fmtAll(s osconfig.Secret) string {
	return fmt.Sprintf("%v %s %+v %#v %q %d %x %10s", s, s, s, s, s, s, s, s) + fmt.Sprint(s) + fmt.Sprint([]osconfig.Secret{s})
}
