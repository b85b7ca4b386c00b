package osconfig

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vclq/vclq/messages"
)

// Windows guest facts.
const (
	// WindowsCurrentImagePath is currentimage.txt on Windows guests (root's profile).
	WindowsCurrentImagePath = `C:\Users\root\currentimage.txt`
	// WindowsFirewallGroup groups every firewall rule vclq makes; rebuilt whole on
	// each change.
	WindowsFirewallGroup = "VCLQ"
	// WindowsPostLoadScript runs at the end of PostLoad when the image has it.
	WindowsPostLoadScript = `C:\vcl\vcl_post_load.ps1`
	// WindowsUserDescription marks the local accounts vclq creates (Windows' group vcl).
	WindowsUserDescription = "vclq reservation user"
	// PowerShellCommand is the command line every Windows operation runs; the script
	// itself (and any secret in it) goes on stdin, never on the command line.
	PowerShellCommand = "powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -Command -"
)

// Well-known group SIDs (locale independent names).
const (
	sidAdministrators     = "S-1-5-32-544"
	sidRemoteDesktopUsers = "S-1-5-32-555"
)

// Windows configures a Windows guest through OpenSSH as root with PowerShell. Create it
// with Client.Windows.
type Windows struct{ base }

// Windows returns the operations for the Windows guest t, reporting to p (nil:
// discard). It validates t and makes no connection.
func (c *Client) Windows(t Target, p Progress) (*Windows, error) {
	b, err := c.base(messages.OSWindows, t, p, Command{Name: "probe", Line: "echo vclq"})
	if err != nil {
		return nil, err
	}
	return &Windows{b}, nil
}

// psCommand wraps PowerShell statements (joined on one line, so stdin mode runs them
// as one) in a try/catch that turns any error into exit status 1 with the message on
// stderr, and sends them on stdin.
func psCommand(name string, stmts ...string) Command {
	script := "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'; try { " +
		strings.Join(stmts, "; ") +
		" } catch { [Console]::Error.WriteLine($_.Exception.Message); exit 1 }; exit 0\n"
	return Command{Name: name, Line: PowerShellCommand, Stdin: []byte(script)}
}

// NodeStatus reads currentimage.txt (ErrNoCurrentImage when there is none).
func (w *Windows) NodeStatus(ctx context.Context) (NodeStatus, error) {
	var out []byte
	err := w.session(ctx, func(r Runner) error {
		res, err := r.Run(ctx, psCommand("read currentimage.txt",
			ps("if (-not (Test-Path -LiteralPath %s)) { exit 3 }", WindowsCurrentImagePath),
			ps("Get-Content -Raw -LiteralPath %s", WindowsCurrentImagePath)))
		if ce := (*CommandError)(nil); errors.As(err, &ce) && ce.ExitStatus == 3 {
			return ErrNoCurrentImage
		}
		out = res.Stdout
		return err
	})
	if err != nil {
		return NodeStatus{}, w.wrap("node_status", err)
	}
	s, err := ParseCurrentImage(out)
	return s, w.wrap("node_status", err)
}

// PostLoad configures a freshly loaded Windows guest, idempotently: firewall (group
// VCLQ: everything from the management node, SSH 22 and RDP 3389 from anywhere, ping
// from the management node; the image's own OpenSSH and Remote Desktop allow rules
// disabled; inbound blocked by default on every profile), random passwords for
// Administrator and root (on stdin), sleep and hibernation off, the computer renamed to
// the short name (applies at next boot; skipped if longer than 15 characters), the
// image's WindowsPostLoadScript, and vcld_post_load=success in currentimage.txt.
func (w *Windows) PostLoad(ctx context.Context) error {
	if err := validateIP("management ip", w.t.ManagementIP); err != nil {
		return w.wrap("post_load", err)
	}
	admin, err := NewPassword()
	if err != nil {
		return w.wrap("post_load", err)
	}
	root, err := NewPassword()
	if err != nil {
		return w.wrap("post_load", err)
	}
	var warn string
	err = w.session(ctx, func(r Runner) error {
		if _, err := r.Run(ctx, w.firewall("Any")); err != nil {
			return err
		}
		if _, err := r.Run(ctx, psCommand("passwords",
			ps("Set-LocalUser -Name %s -Password (ConvertTo-SecureString -String %s -AsPlainText -Force)", "Administrator", admin.Reveal()),
			ps("if (Get-LocalUser -Name %s -ErrorAction SilentlyContinue) { Set-LocalUser -Name %s -Password (ConvertTo-SecureString -String %s -AsPlainText -Force) }", "root", "root", root.Reveal()),
		)); err != nil {
			return err
		}
		stmts := []string{
			"powercfg.exe /change standby-timeout-ac 0",
			"powercfg.exe /change hibernate-timeout-ac 0",
			"powercfg.exe /hibernate off",
		}
		if h := w.t.Hostname; h != "" {
			short := messages.ShortName(h)
			if len(short) <= 15 {
				stmts = append(stmts, ps("if ($env:COMPUTERNAME -ne %s) { Rename-Computer -NewName %s -Force -WarningAction SilentlyContinue }", short, short))
			} else {
				warn = "computer name " + short + " is longer than 15 characters: not renamed"
			}
		}
		stmts = append(stmts, ps("if (Test-Path -LiteralPath %s) { & %s }", WindowsPostLoadScript, WindowsPostLoadScript))
		if _, err := r.Run(ctx, psCommand("settings", stmts...)); err != nil {
			return err
		}
		_, err := r.Run(ctx, psCommand("tag post_load", psTag(TagPostLoad, "success ("+timestamp()+")")))
		return err
	})
	if err != nil {
		return w.wrap("post_load", err)
	}
	if warn != "" {
		w.p.Step(messages.LoadWarning, warn)
	}
	w.p.Step(messages.LoadInfo, "post_load: firewall (all from "+w.t.ManagementIP+", SSH and RDP open), Administrator and root passwords randomised, sleep off")
	return nil
}

// AddUsers creates or updates local accounts (New-LocalUser / Set-LocalUser with the
// password, generated when empty, on stdin), in Remote Desktop Users, in
// Administrators when RootAccess (removed when not), and writes their
// authorized_keys. UID is ignored. It reports addinguser.
func (w *Windows) AddUsers(ctx context.Context, users []User) ([]Credential, error) {
	if err := validateUsers(users); err != nil {
		return nil, w.wrap("add_users", err)
	}
	creds, err := credentials(users)
	if err != nil {
		return nil, w.wrap("add_users", err)
	}
	err = w.session(ctx, func(r Runner) error {
		for i, u := range users {
			group := ps("Remove-LocalGroupMember -SID %s -Member %s -ErrorAction SilentlyContinue", sidAdministrators, u.Login)
			if u.RootAccess {
				group = ps("Add-LocalGroupMember -SID %s -Member %s -ErrorAction SilentlyContinue", sidAdministrators, u.Login)
			}
			if _, err := r.Run(ctx, psCommand("account",
				ps("$p = ConvertTo-SecureString -String %s -AsPlainText -Force", creds[i].Password.Reveal()),
				ps("if (Get-LocalUser -Name %s -ErrorAction SilentlyContinue) { Set-LocalUser -Name %s -Password $p } else { New-LocalUser -Name %s -Password $p -PasswordNeverExpires -AccountNeverExpires -Description %s | Out-Null }",
					u.Login, u.Login, u.Login, WindowsUserDescription),
				ps("Add-LocalGroupMember -SID %s -Member %s -ErrorAction SilentlyContinue", sidRemoteDesktopUsers, u.Login),
				group,
			)); err != nil {
				return fmt.Errorf("user %s: %w", u.Login, err)
			}
			keys := make([]string, len(u.SSHKeys))
			for j, k := range u.SSHKeys {
				keys[j] = PSQuote(k)
			}
			dir := `C:\Users\` + u.Login + `\.ssh`
			file := dir + `\authorized_keys`
			if _, err := r.Run(ctx, psCommand("authorized_keys",
				ps("New-Item -ItemType Directory -Force -Path %s | Out-Null", dir),
				ps("Set-Content -LiteralPath %s -Encoding Ascii -Value @(", file)+strings.Join(keys, ", ")+")",
				ps("icacls.exe %s /inheritance:r /grant %s /grant %s /grant %s | Out-Null", file, u.Login+":F", "*S-1-5-18:F", "*"+sidAdministrators+":F"),
			)); err != nil {
				return fmt.Errorf("user %s: %w", u.Login, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, w.wrap("add_users", err)
	}
	w.p.Step(messages.LoadAddingUser, "added "+describeUsers(users))
	return creds, nil
}

// GrantAccess narrows SSH (22) and RDP (3389) to remoteIP. Idempotent.
func (w *Windows) GrantAccess(ctx context.Context, remoteIP string) error {
	if err := errors.Join(validateIP("remote ip", remoteIP), validateIP("management ip", w.t.ManagementIP)); err != nil {
		return w.wrap("grant_access", err)
	}
	err := w.session(ctx, func(r Runner) error {
		_, err := r.Run(ctx, w.firewall(remoteIP))
		return err
	})
	if err != nil {
		return w.wrap("grant_access", err)
	}
	w.p.Step(messages.LoadInfo, "grant_access: SSH (22) and RDP (3389) open to "+remoteIP+" only")
	return nil
}

// firewall rebuilds the VCLQ rule group; from is "Any" or an IP.
func (w *Windows) firewall(from string) Command {
	rule := func(name, extra, remote string) string {
		return ps("New-NetFirewallRule -Group %s -DisplayName %s -Direction Inbound -Action Allow", WindowsFirewallGroup, name) +
			extra + ps(" -RemoteAddress %s | Out-Null", remote)
	}
	return psCommand("firewall",
		ps("Get-NetFirewallRule -Group %s -ErrorAction SilentlyContinue | Remove-NetFirewallRule", WindowsFirewallGroup),
		ps("Disable-NetFirewallRule -Name %s -ErrorAction SilentlyContinue", "OpenSSH-Server-In-TCP"),
		ps("Disable-NetFirewallRule -Group %s -ErrorAction SilentlyContinue", "@FirewallAPI.dll,-28752"),
		rule("VCLQ management node", "", w.t.ManagementIP),
		rule("VCLQ ping", " -Protocol ICMPv4 -IcmpType 8", w.t.ManagementIP),
		rule("VCLQ SSH", " -Protocol TCP -LocalPort 22", from),
		rule("VCLQ RDP", " -Protocol TCP -LocalPort 3389", from),
		"Set-NetFirewallProfile -Profile Domain,Private,Public -Enabled True -DefaultInboundAction Block",
	)
}

// LoggedInUsers lists users with a session (quser) or a process, less the system
// accounts, root and Administrator, lower-cased and sorted.
func (w *Windows) LoggedInUsers(ctx context.Context) ([]string, error) {
	var users []string
	err := w.session(ctx, func(r Runner) (err error) {
		users, err = w.loggedIn(ctx, r)
		return err
	})
	return users, w.wrap("logged_in_users", err)
}

func (w *Windows) loggedIn(ctx context.Context, r Runner) ([]string, error) {
	res, err := r.Run(ctx, psCommand("logged in users",
		"$n = @()",
		"try { $n += @(quser.exe 2>$null | Select-Object -Skip 1 | ForEach-Object { (($_.Trim() -replace '^>', '') -split '\\s+')[0] }) } catch { }",
		"$n += @(Get-Process -IncludeUserName | Where-Object { $_.UserName } | ForEach-Object { ($_.UserName -split '\\\\')[-1] })",
		"$n | Sort-Object -Unique | Write-Output",
	))
	if err != nil {
		return nil, err
	}
	return parseWindowsUsers(string(res.Stdout)), nil
}

func parseWindowsUsers(out string) []string {
	system := map[string]bool{"system": true, "local service": true, "network service": true, "root": true, "administrator": true, "sshd": true}
	set := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		u := strings.ToLower(strings.TrimSpace(line))
		if u == "" || system[u] || strings.HasPrefix(u, "dwm-") || strings.HasPrefix(u, "umfd-") || strings.HasSuffix(u, "$") {
			continue
		}
		set[u] = true
	}
	users := make([]string, 0, len(set))
	for u := range set {
		users = append(users, u)
	}
	slices.Sort(users)
	return users
}

// Taint tags currentimage.txt with vcld_tainted. Idempotent.
func (w *Windows) Taint(ctx context.Context) error {
	err := w.session(ctx, func(r Runner) error {
		_, err := r.Run(ctx, psCommand("tag tainted", psTag(TagTainted, "user logged in ("+timestamp()+")")))
		return err
	})
	if err != nil {
		return w.wrap("taint", err)
	}
	w.p.Step(messages.LoadInfo, "image tainted: a user logged in")
	return nil
}

// Sanitize refuses (ErrUserLoggedIn) while a user is logged in, then removes logins and
// every account vclq created (WindowsUserDescription) with their profiles, and resets
// the firewall to the post-load state. Running it again is harmless.
func (w *Windows) Sanitize(ctx context.Context, logins []string) error {
	if err := errors.Join(validateLogins(logins), validateIP("management ip", w.t.ManagementIP)); err != nil {
		return w.wrap("sanitize", err)
	}
	err := w.session(ctx, func(r Runner) error {
		in, err := w.loggedIn(ctx, r)
		if err != nil {
			return err
		}
		if len(in) > 0 {
			return fmt.Errorf("%w: %s", ErrUserLoggedIn, strings.Join(in, ", "))
		}
		names := make([]string, len(logins))
		for i, l := range logins {
			names[i] = PSQuote(l)
		}
		if _, err := r.Run(ctx, psCommand("remove users",
			"$names = @("+strings.Join(names, ", ")+")",
			ps("$names += @(Get-LocalUser | Where-Object { $_.Description -eq %s } | ForEach-Object { $_.Name })", WindowsUserDescription),
			"foreach ($n in ($names | Sort-Object -Unique)) { if (Get-LocalUser -Name $n -ErrorAction SilentlyContinue) { Remove-LocalUser -Name $n; Get-CimInstance -ClassName Win32_UserProfile | Where-Object { $_.LocalPath -like ('*\\' + $n) } | Remove-CimInstance } }",
		)); err != nil {
			return err
		}
		_, err = r.Run(ctx, w.firewall("Any"))
		return err
	})
	if err != nil {
		return w.wrap("sanitize", err)
	}
	w.p.Step(messages.LoadInfo, "sanitize: user accounts and firewall exceptions removed")
	return nil
}

// PreCapture runs Sanitize, removes the vcld_post_load and vcld_tainted tags, and
// shuts down in 5 s (shutdown.exe; the caller waits for power-off).
func (w *Windows) PreCapture(ctx context.Context, logins []string) error {
	if err := w.Sanitize(ctx, logins); err != nil {
		return err
	}
	err := w.session(ctx, func(r Runner) error {
		if _, err := r.Run(ctx, psCommand("untag", psUntag(TagPostLoad, TagTainted))); err != nil {
			return err
		}
		_, err := r.Run(ctx, psCommand("shutdown", "shutdown.exe /s /t 5 /f"))
		return err
	})
	if err != nil {
		return w.wrap("pre_capture", err)
	}
	w.p.Step(messages.LoadInfo, "pre_capture: sanitized, shutting down")
	return nil
}

// psTag sets key=value in currentimage.txt.
func psTag(key, value string) string {
	return ps("$f = %s; $l = @(); if (Test-Path -LiteralPath $f) { $l = @(Get-Content -LiteralPath $f | Where-Object { $_ -notlike %s }) }; $l += %s; Set-Content -LiteralPath $f -Value $l -Encoding Ascii",
		WindowsCurrentImagePath, key+"=*", key+"="+value)
}

// psUntag removes the keys' lines from currentimage.txt.
func psUntag(keys ...string) string {
	conds := make([]string, len(keys))
	for i, k := range keys {
		conds[i] = ps("$_ -notlike %s", k+"=*")
	}
	return ps("$f = %s; if (Test-Path -LiteralPath $f) { $l = @(Get-Content -LiteralPath $f | Where-Object { ", WindowsCurrentImagePath) +
		strings.Join(conds, " -and ") + " }); Set-Content -LiteralPath $f -Value $l -Encoding Ascii }"
}
