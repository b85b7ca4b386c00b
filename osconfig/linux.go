package osconfig

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vclq/vclq/messages"
)

// Linux guest facts.
const (
	// CurrentImagePath is currentimage.txt on Linux guests (root's home).
	CurrentImagePath = "/root/currentimage.txt"
	// FirewallChain is the iptables chain (filter table, jumped to first from INPUT)
	// holding every rule vclq makes. It is rebuilt whole on each change, so stale
	// rules never survive.
	FirewallChain = "VCLQ"
	// PostLoadScript runs at the end of PostLoad when the image has it (executable).
	PostLoadScript = "/etc/vcl/vcl_post_load"
	// VCLGroup is the primary group of reservation users.
	VCLGroup = "vcl"
)

// Linux configures a Linux guest over SSH as root. Create it with Client.Linux.
type Linux struct{ base }

// Linux returns the operations for the Linux guest t, reporting to p (nil: discard).
// It validates t and makes no connection.
func (c *Client) Linux(t Target, p Progress) (*Linux, error) {
	b, err := c.base(messages.OSLinux, t, p, Command{Name: "probe", Line: "true"})
	if err != nil {
		return nil, err
	}
	connect, def := b.connect, c.cfg.CommandTimeout
	b.connect = func(ctx context.Context) (Runner, error) {
		r, err := connect(ctx)
		if err != nil {
			return nil, err
		}
		return guestTimeout{r, def}, nil
	}
	return &Linux{b}, nil
}

// guestTimeout also bounds each command inside the guest (coreutils timeout, 1 s
// after ours), because sshd does not kill a session's command when we give up on it.
type guestTimeout struct {
	Runner
	def time.Duration
}

func (g guestTimeout) Run(ctx context.Context, cmd Command) (Result, error) {
	cmd.Line = wrapTimeout(cmd, g.def)
	return g.Runner.Run(ctx, cmd)
}

// wrapTimeout returns cmd's line run under timeout(1) with the command's timeout
// (default def) plus 1 s, KILLed 2 s later; as is where timeout(1) is missing.
func wrapTimeout(cmd Command, def time.Duration) string {
	d := cmd.Timeout
	if d <= 0 {
		d = def
	}
	secs := strconv.Itoa(int(d/time.Second) + 1)
	q := ShellQuote(cmd.Line)
	return "if command -v timeout >/dev/null 2>&1; then exec timeout -k 2 " + secs + " sh -c " + q + "; else exec sh -c " + q + "; fi"
}

// NodeStatus reads currentimage.txt (ErrNoCurrentImage when there is none).
func (l *Linux) NodeStatus(ctx context.Context) (NodeStatus, error) {
	var out []byte
	err := l.session(ctx, func(r Runner) error {
		res, err := r.Run(ctx, Command{Name: "read currentimage.txt", Line: sh("cat %s 2>/dev/null || exit 3", CurrentImagePath)})
		if ce := (*CommandError)(nil); errors.As(err, &ce) && ce.ExitStatus == 3 {
			return ErrNoCurrentImage
		}
		out = res.Stdout
		return err
	})
	if err != nil {
		return NodeStatus{}, l.wrap("node_status", err)
	}
	s, err := ParseCurrentImage(out)
	return s, l.wrap("node_status", err)
}

// PostLoad configures a freshly loaded guest, idempotently: the firewall (everything
// from the management node, SSH from anywhere, nothing else; stale rules gone), a
// random root password (set through chpasswd on stdin, never logged or returned), root's
// private keys (~/.ssh/id_*) removed, the host name set (Target.Hostname, if given), the
// image's PostLoadScript run, and vcld_post_load=success written to currentimage.txt.
// It needs Target.ManagementIP. Reports info when done.
func (l *Linux) PostLoad(ctx context.Context) error {
	if err := validateIP("management ip", l.t.ManagementIP); err != nil {
		return l.wrap("post_load", err)
	}
	pw, err := NewPassword()
	if err != nil {
		return l.wrap("post_load", err)
	}
	err = l.session(ctx, func(r Runner) error {
		if err := l.firewall(ctx, r, ""); err != nil {
			return err
		}
		if _, err := r.Run(ctx, Command{Name: "root password", Line: "chpasswd", Stdin: []byte("root:" + pw.Reveal() + "\n")}); err != nil {
			return err
		}
		if _, err := r.Run(ctx, Command{Name: "clear private keys", Line: "rm -f /root/.ssh/id_*"}); err != nil {
			return err
		}
		if h := l.t.Hostname; h != "" {
			line := sh(`printf '%%s\n' %s > /etc/hostname && `+
				`{ hostnamectl set-hostname %s >/dev/null 2>&1 || hostname %s 2>/dev/null || printf '%%s' %s > /proc/sys/kernel/hostname; }`, h, h, h, h)
			if _, err := r.Run(ctx, Command{Name: "hostname", Line: line}); err != nil {
				return err
			}
		}
		if _, err := r.Run(ctx, Command{Name: "post-load script", Line: sh("if [ -x %s ]; then %s; fi", PostLoadScript, PostLoadScript)}); err != nil {
			return err
		}
		_, err := r.Run(ctx, Command{Name: "tag post_load", Line: tagLine(TagPostLoad, "success ("+timestamp()+")")})
		return err
	})
	if err != nil {
		return l.wrap("post_load", err)
	}
	info := "post_load: firewall (all from " + l.t.ManagementIP + ", SSH open), root password randomised, private keys cleared"
	if l.t.Hostname != "" {
		info += ", hostname " + l.t.Hostname
	}
	l.p.Step(messages.LoadInfo, info)
	l.log.Info().Msg("post_load done")
	return nil
}

// AddUsers creates or updates the accounts, idempotently: useradd with a home, shell
// /bin/bash, primary group vcl and the uid when given; the password (generated when
// empty) through chpasswd on stdin; a sudoers entry when RootAccess (removed when not);
// authorized_keys replaced by SSHKeys. Every user is validated before any connection.
// It reports addinguser and returns each account's password.
func (l *Linux) AddUsers(ctx context.Context, users []User) ([]Credential, error) {
	if err := validateUsers(users); err != nil {
		return nil, l.wrap("add_users", err)
	}
	creds, err := credentials(users)
	if err != nil {
		return nil, l.wrap("add_users", err)
	}
	err = l.session(ctx, func(r Runner) error {
		if _, err := r.Run(ctx, Command{Name: "group vcl", Line: sh("getent group %s >/dev/null 2>&1 || groupadd %s", VCLGroup, VCLGroup)}); err != nil {
			return err
		}
		for i, u := range users {
			if err := l.addUser(ctx, r, u, creds[i].Password); err != nil {
				return fmt.Errorf("user %s: %w", u.Login, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, l.wrap("add_users", err)
	}
	l.p.Step(messages.LoadAddingUser, "added "+describeUsers(users))
	return creds, nil
}

func (l *Linux) addUser(ctx context.Context, r Runner, u User, pw Secret) error {
	add := []string{"useradd", "-m", "-s", "/bin/bash", "-g", VCLGroup}
	if u.UID != 0 {
		add = append(add, "-u", strconv.FormatInt(u.UID, 10))
	}
	add = append(add, "--", u.Login)
	if _, err := r.Run(ctx, Command{Name: "useradd", Line: sh("id -u %s >/dev/null 2>&1 || ", u.Login) + argv(add...)}); err != nil {
		return err
	}
	if _, err := r.Run(ctx, Command{Name: "chpasswd", Line: "chpasswd", Stdin: []byte(u.Login + ":" + pw.Reveal() + "\n")}); err != nil {
		return err
	}
	sudoers := "/etc/sudoers.d/vclq-" + u.Login
	if u.RootAccess {
		tmp := sudoers + ".tmp" // sudo ignores names with a dot
		line := sh("mkdir -p /etc/sudoers.d && cat > %s && chmod 0440 %s && mv -f %s %s", tmp, tmp, tmp, sudoers)
		if _, err := r.Run(ctx, Command{Name: "sudoers", Line: line, Stdin: []byte(u.Login + " ALL=(ALL) NOPASSWD: ALL\n")}); err != nil {
			return err
		}
	} else if _, err := r.Run(ctx, Command{Name: "sudoers", Line: sh("rm -f %s", sudoers)}); err != nil {
		return err
	}
	keys := strings.Join(u.SSHKeys, "\n")
	if keys != "" {
		keys += "\n"
	}
	line := sh(`h=$(getent passwd %s | cut -d: -f6) && [ -n "$h" ] && `+
		`install -d -m 0700 -o %s -g %s "$h/.ssh" && cat > "$h/.ssh/authorized_keys.vclq" && `+
		`chown %s "$h/.ssh/authorized_keys.vclq" && chmod 0600 "$h/.ssh/authorized_keys.vclq" && `+
		`mv -f "$h/.ssh/authorized_keys.vclq" "$h/.ssh/authorized_keys"`, u.Login, u.Login, VCLGroup, u.Login+":"+VCLGroup)
	_, err := r.Run(ctx, Command{Name: "authorized_keys", Line: line, Stdin: []byte(keys)})
	return err
}

// GrantAccess narrows SSH (22) to remoteIP: the firewall then allows everything from
// the management node, SSH from remoteIP, nothing else. Idempotent.
func (l *Linux) GrantAccess(ctx context.Context, remoteIP string) error {
	if err := errors.Join(validateIP("remote ip", remoteIP), validateIP("management ip", l.t.ManagementIP)); err != nil {
		return l.wrap("grant_access", err)
	}
	err := l.session(ctx, func(r Runner) error { return l.firewall(ctx, r, remoteIP) })
	if err != nil {
		return l.wrap("grant_access", err)
	}
	l.p.Step(messages.LoadInfo, "grant_access: SSH (22) open to "+remoteIP+" only")
	return nil
}

// LoggedInUsers lists the users (uid >= 1000, not nobody) that have a process on the
// guest (an SSH session, a desktop) or a utmp login, sorted.
func (l *Linux) LoggedInUsers(ctx context.Context) ([]string, error) {
	var users []string
	err := l.session(ctx, func(r Runner) (err error) {
		users, err = loggedIn(ctx, r)
		return err
	})
	return users, l.wrap("logged_in_users", err)
}

func loggedIn(ctx context.Context, r Runner) ([]string, error) {
	res, err := r.Run(ctx, Command{Name: "logged in users", Line: "ps -eo uid=,user:32=; echo ---; who 2>/dev/null || true"})
	if err != nil {
		return nil, err
	}
	return parseLoggedIn(string(res.Stdout)), nil
}

func parseLoggedIn(out string) []string {
	set := map[string]bool{}
	procs, utmp, _ := strings.Cut(out, "---")
	for _, line := range strings.Split(procs, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		uid, err := strconv.Atoi(f[0])
		if err != nil || uid < 1000 || uid == 65534 {
			continue
		}
		set[f[1]] = true
	}
	for _, line := range strings.Split(utmp, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] != "root" {
			set[f[0]] = true
		}
	}
	users := make([]string, 0, len(set))
	for u := range set {
		users = append(users, u)
	}
	slices.Sort(users)
	return users
}

// Taint records in currentimage.txt that a user logged in (vcld_tainted), so the slot
// is reloaded rather than reused. Idempotent.
func (l *Linux) Taint(ctx context.Context) error {
	err := l.session(ctx, func(r Runner) error {
		_, err := r.Run(ctx, Command{Name: "tag tainted", Line: tagLine(TagTainted, "user logged in ("+timestamp()+")")})
		return err
	})
	if err != nil {
		return l.wrap("taint", err)
	}
	l.p.Step(messages.LoadInfo, "image tainted: a user logged in")
	return nil
}

// Sanitize makes the guest reusable: it refuses (ErrUserLoggedIn) while a user is
// logged in, then deletes logins and every other member of group vcl (with homes and
// sudoers entries), and resets the firewall to the post-load state (no exceptions).
// Running it again is harmless.
func (l *Linux) Sanitize(ctx context.Context, logins []string) error {
	if err := errors.Join(validateLogins(logins), validateIP("management ip", l.t.ManagementIP)); err != nil {
		return l.wrap("sanitize", err)
	}
	var removed []string
	err := l.session(ctx, func(r Runner) error {
		in, err := loggedIn(ctx, r)
		if err != nil {
			return err
		}
		if len(in) > 0 {
			return fmt.Errorf("%w: %s", ErrUserLoggedIn, strings.Join(in, ", "))
		}
		res, err := r.Run(ctx, Command{Name: "list vcl users", Line: sh(`g=$(getent group %s | cut -d: -f3); [ -z "$g" ] || getent passwd | awk -F: -v g="$g" '$4 == g { print $1 }'`, VCLGroup)})
		if err != nil {
			return err
		}
		all := slices.Clone(logins)
		for _, u := range strings.Fields(string(res.Stdout)) {
			if messages.ValidUsername(u) == nil && u != "root" {
				all = append(all, u)
			}
		}
		slices.Sort(all)
		all = slices.Compact(all)
		for _, u := range all {
			line := sh(`if id -u %s >/dev/null 2>&1; then userdel -r %s >/dev/null 2>&1 || true; `+
				`if id -u %s >/dev/null 2>&1; then echo "user still exists" >&2; exit 1; fi; echo removed; fi; rm -f %s`,
				u, u, u, "/etc/sudoers.d/vclq-"+u)
			res, err := r.Run(ctx, Command{Name: "userdel", Line: line})
			if err != nil {
				return fmt.Errorf("user %s: %w", u, err)
			}
			if strings.TrimSpace(string(res.Stdout)) == "removed" {
				removed = append(removed, u)
			}
		}
		return l.firewall(ctx, r, "")
	})
	if err != nil {
		return l.wrap("sanitize", err)
	}
	info := "sanitize: no user accounts to remove"
	if len(removed) > 0 {
		info = "sanitize: removed user accounts " + strings.Join(removed, ", ")
	}
	l.p.Step(messages.LoadInfo, info+"; firewall exceptions removed")
	return nil
}

// PreCapture prepares the guest for imaging: Sanitize, remove the vcld_post_load and
// vcld_tainted tags (the image must post-load again), then shut down (detached, in 2
// s; the caller waits for power-off through the hypervisor).
func (l *Linux) PreCapture(ctx context.Context, logins []string) error {
	if err := l.Sanitize(ctx, logins); err != nil {
		return err
	}
	err := l.session(ctx, func(r Runner) error {
		if _, err := r.Run(ctx, Command{Name: "untag", Line: untagLine(TagPostLoad, TagTainted)}); err != nil {
			return err
		}
		_, err := r.Run(ctx, Command{Name: "shutdown", Line: "nohup sh -c 'sleep 2; shutdown -h now || poweroff' >/dev/null 2>&1 </dev/null &"})
		return err
	})
	if err != nil {
		return l.wrap("pre_capture", err)
	}
	l.p.Step(messages.LoadInfo, "pre_capture: sanitized, shutting down")
	return nil
}

// firewall rebuilds chain VCLQ (IPv4 and, where ip6tables exists, IPv6): loopback and
// established traffic, everything from the management node, SSH from sshFrom (""
// means anywhere), ICMPv6 (neighbour discovery), and a final DROP; INPUT jumps to it
// first. The chain is replaced whole (iptables-restore --noflush), so stale rules go.
func (l *Linux) firewall(ctx context.Context, r Runner, sshFrom string) error {
	for _, v6 := range []bool{false, true} {
		rules := firewallRules(l.t.ManagementIP, sshFrom, v6)
		tool, restore := "iptables", "iptables-restore"
		if v6 {
			tool, restore = "ip6tables", "ip6tables-restore"
		}
		line := "set -e\n"
		if v6 {
			line += "command -v ip6tables-restore >/dev/null 2>&1 || exit 0\n"
		}
		line += restore + " --noflush\n" +
			tool + " -C INPUT -j " + FirewallChain + " 2>/dev/null || " + tool + " -I INPUT 1 -j " + FirewallChain + "\n"
		if _, err := r.Run(ctx, Command{Name: "firewall " + tool, Line: line, Stdin: []byte(rules)}); err != nil {
			return err
		}
	}
	return nil
}

// firewallRules renders the iptables-restore input for one family. IPs must be
// validated: they are checked again here and a wrong family is left out.
func firewallRules(mgmtIP, sshFrom string, v6 bool) string {
	fam := func(s string) (string, bool) {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Unmap().Is4() == v6 {
			return "", false
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()).String(), true
	}
	var b strings.Builder
	b.WriteString("*filter\n:" + FirewallChain + " - [0:0]\n")
	add := func(rule string) { b.WriteString("-A " + FirewallChain + " " + rule + "\n") }
	add(`-i lo -m comment --comment "vclq loopback" -j ACCEPT`)
	add(`-m conntrack --ctstate ESTABLISHED,RELATED -m comment --comment "vclq established" -j ACCEPT`)
	if v6 {
		add(`-p ipv6-icmp -m comment --comment "vclq icmpv6" -j ACCEPT`)
	}
	if m, ok := fam(mgmtIP); ok {
		add(`-s ` + m + ` -m comment --comment "vclq management node" -j ACCEPT`)
	}
	switch {
	case sshFrom == "":
		add(`-p tcp --dport 22 -m comment --comment "vclq ssh" -j ACCEPT`)
	default:
		if s, ok := fam(sshFrom); ok {
			add(`-p tcp -s ` + s + ` --dport 22 -m comment --comment "vclq ssh user" -j ACCEPT`)
		}
	}
	add(`-m comment --comment "vclq default deny" -j DROP`)
	b.WriteString("COMMIT\n")
	return b.String()
}

// tagLine sets key=value in currentimage.txt, replacing any earlier key= line.
func tagLine(key, value string) string {
	return sh(`f=%s; touch "$f" && { grep -v %s "$f" || true; printf '%%s\n' %s; } > "$f.vclq" && mv -f "$f.vclq" "$f"`,
		CurrentImagePath, "^"+key+"=", key+"="+value)
}

// untagLine removes the keys' lines from currentimage.txt.
func untagLine(keys ...string) string {
	pat := "^(" + strings.Join(keys, "|") + ")="
	return sh(`f=%s; [ -f "$f" ] || exit 0; { grep -Ev %s "$f" || true; } > "$f.vclq" && mv -f "$f.vclq" "$f"`, CurrentImagePath, pat)
}

func describeUsers(users []User) string {
	var parts []string
	for _, u := range users {
		s := "user " + u.Login
		if u.RootAccess {
			s += " (root access)"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}
