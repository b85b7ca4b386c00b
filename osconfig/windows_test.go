package osconfig

import (
	"context"
	"errors"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/vclq/vclq/messages"
)

// fakeRunner records every command and answers from a function.
type fakeRunner struct {
	mu      sync.Mutex
	cmds    []Command
	answer  func(Command) (Result, error)
	closed  int
	connect int
}

func (f *fakeRunner) Run(_ context.Context, c Command) (Result, error) {
	f.mu.Lock()
	f.cmds = append(f.cmds, c)
	f.mu.Unlock()
	if f.answer != nil {
		return f.answer(c)
	}
	return Result{}, nil
}

func (f *fakeRunner) Close() error { f.closed++; return nil }

func (f *fakeRunner) names() []string {
	var n []string
	for _, c := range f.cmds {
		n = append(n, c.Name)
	}
	return n
}

type rec struct{ steps [][2]string }

func (r *rec) Step(name, info string) { r.steps = append(r.steps, [2]string{name, info}) }

var winTarget = Target{Slot: "vclw1", IP: "198.51.100.20", Hostname: "vclw1.example.edu", ManagementIP: "198.51.100.1"}

func fakeWindows(t *testing.T, tg Target, answer func(Command) (Result, error)) (*Windows, *fakeRunner, *rec) {
	t.Helper()
	f := &fakeRunner{answer: answer}
	p := &rec{}
	w := &Windows{base{os: "windows", t: tg, p: p, port: 22, probe: Command{Name: "probe", Line: "echo vclq"},
		connect: func(context.Context) (Runner, error) { f.connect++; return f, nil }}}
	return w, f, p
}

// No command line carries a script or a secret: every Windows command is the fixed
// PowerShell invocation, with the script on stdin.
func checkArgv(t *testing.T, f *fakeRunner, secrets ...string) {
	t.Helper()
	for _, c := range f.cmds {
		if c.Line != PowerShellCommand {
			t.Errorf("%s: command line %q is not the fixed PowerShell invocation", c.Name, c.Line)
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(c.Line, s) {
				t.Errorf("%s: secret on the command line", c.Name)
			}
		}
	}
}

func stdinOf(f *fakeRunner, name string) string {
	for _, c := range f.cmds {
		if c.Name == name {
			return string(c.Stdin)
		}
	}
	return ""
}

func wrapPS(body string) string {
	return "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'; try { " + body +
		" } catch { [Console]::Error.WriteLine($_.Exception.Message); exit 1 }; exit 0\n"
}

func TestWindowsPostLoadTranscript(t *testing.T) {
	w, f, p := fakeWindows(t, winTarget, nil)
	if err := w.PostLoad(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(f.names(), ","), "firewall,passwords,settings,tag post_load"; got != want {
		t.Fatalf("commands %s, want %s", got, want)
	}
	wantFW := wrapPS(strings.Join([]string{
		"Get-NetFirewallRule -Group 'VCLQ' -ErrorAction SilentlyContinue | Remove-NetFirewallRule",
		"Disable-NetFirewallRule -Name 'OpenSSH-Server-In-TCP' -ErrorAction SilentlyContinue",
		"Disable-NetFirewallRule -Group '@FirewallAPI.dll,-28752' -ErrorAction SilentlyContinue",
		"New-NetFirewallRule -Group 'VCLQ' -DisplayName 'VCLQ management node' -Direction Inbound -Action Allow -RemoteAddress '198.51.100.1' | Out-Null",
		"New-NetFirewallRule -Group 'VCLQ' -DisplayName 'VCLQ ping' -Direction Inbound -Action Allow -Protocol ICMPv4 -IcmpType 8 -RemoteAddress '198.51.100.1' | Out-Null",
		"New-NetFirewallRule -Group 'VCLQ' -DisplayName 'VCLQ SSH' -Direction Inbound -Action Allow -Protocol TCP -LocalPort 22 -RemoteAddress 'Any' | Out-Null",
		"New-NetFirewallRule -Group 'VCLQ' -DisplayName 'VCLQ RDP' -Direction Inbound -Action Allow -Protocol TCP -LocalPort 3389 -RemoteAddress 'Any' | Out-Null",
		"Set-NetFirewallProfile -Profile Domain,Private,Public -Enabled True -DefaultInboundAction Block",
	}, "; "))
	if got := stdinOf(f, "firewall"); got != wantFW {
		t.Errorf("firewall script:\n got %q\nwant %q", got, wantFW)
	}
	pw := regexp.MustCompile(`Set-LocalUser -Name '(Administrator|root)' -Password \(ConvertTo-SecureString -String '([^']{15,})' -AsPlainText -Force\)`).
		FindAllStringSubmatch(stdinOf(f, "passwords"), -1)
	if len(pw) != 2 || pw[0][1] != "Administrator" || pw[1][1] != "root" || pw[0][2] == pw[1][2] {
		t.Fatalf("passwords script does not set two different random passwords: %q", pw)
	}
	checkArgv(t, f, pw[0][2], pw[1][2])
	for _, s := range p.steps {
		if strings.Contains(s[1], pw[0][2]) || strings.Contains(s[1], pw[1][2]) {
			t.Fatal("a password reached progress")
		}
	}
	settings := stdinOf(f, "settings")
	for _, want := range []string{
		"powercfg.exe /change standby-timeout-ac 0",
		"if ($env:COMPUTERNAME -ne 'vclw1') { Rename-Computer -NewName 'vclw1' -Force -WarningAction SilentlyContinue }",
		`if (Test-Path -LiteralPath 'C:\vcl\vcl_post_load.ps1') { & 'C:\vcl\vcl_post_load.ps1' }`,
	} {
		if !strings.Contains(settings, want) {
			t.Errorf("settings lacks %q:\n%s", want, settings)
		}
	}
	if tag := stdinOf(f, "tag post_load"); !strings.Contains(tag, `$f = 'C:\Users\root\currentimage.txt'`) ||
		!regexp.MustCompile(`\$l \+= 'vcld_post_load=success \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)'`).MatchString(tag) {
		t.Errorf("tag script: %s", tag)
	}
	if f.connect != 1 || f.closed != 1 {
		t.Errorf("connections %d, closed %d", f.connect, f.closed)
	}
}

func TestWindowsAddUsersTranscript(t *testing.T) {
	w, f, p := fakeWindows(t, winTarget, nil)
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRrZ5XJw9m2zvXa4zRxmOu3Ca8Ucvd+C7rS/TUfC8Yf it@example"
	creds, err := w.AddUsers(t.Context(), []User{
		{Login: "alice", SSHKeys: []string{key}, RootAccess: true, Password: "Pa'ss$(x)`n-123"},
		{Login: "bob"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.names(), ","); got != "account,authorized_keys,account,authorized_keys" {
		t.Fatalf("commands %s", got)
	}
	// A hostile-looking password is one PowerShell literal, on stdin only.
	want := wrapPS(strings.Join([]string{
		"$p = ConvertTo-SecureString -String 'Pa''ss$(x)`n-123' -AsPlainText -Force",
		"if (Get-LocalUser -Name 'alice' -ErrorAction SilentlyContinue) { Set-LocalUser -Name 'alice' -Password $p } else { New-LocalUser -Name 'alice' -Password $p -PasswordNeverExpires -AccountNeverExpires -Description 'vclq reservation user' | Out-Null }",
		"Add-LocalGroupMember -SID 'S-1-5-32-555' -Member 'alice' -ErrorAction SilentlyContinue",
		"Add-LocalGroupMember -SID 'S-1-5-32-544' -Member 'alice' -ErrorAction SilentlyContinue",
	}, "; "))
	if got := string(f.cmds[0].Stdin); got != want {
		t.Errorf("account script:\n got %q\nwant %q", got, want)
	}
	wantKeys := wrapPS(strings.Join([]string{
		`New-Item -ItemType Directory -Force -Path 'C:\Users\alice\.ssh' | Out-Null`,
		`Set-Content -LiteralPath 'C:\Users\alice\.ssh\authorized_keys' -Encoding Ascii -Value @('` + key + `')`,
		`icacls.exe 'C:\Users\alice\.ssh\authorized_keys' /inheritance:r /grant 'alice:F' /grant '*S-1-5-18:F' /grant '*S-1-5-32-544:F' | Out-Null`,
	}, "; "))
	if got := string(f.cmds[1].Stdin); got != wantKeys {
		t.Errorf("keys script:\n got %q\nwant %q", got, wantKeys)
	}
	if !strings.Contains(string(f.cmds[2].Stdin), "Remove-LocalGroupMember -SID 'S-1-5-32-544' -Member 'bob'") {
		t.Errorf("bob without root access is not removed from Administrators: %s", f.cmds[2].Stdin)
	}
	bobPW := creds[1].Password.Reveal()
	if len(bobPW) < 15 || !strings.Contains(string(f.cmds[2].Stdin), PSQuote(bobPW)) {
		t.Errorf("bob's generated password not set")
	}
	checkArgv(t, f, "Pa'ss", bobPW)
	if len(p.steps) != 1 || p.steps[0][0] != "addinguser" || strings.Contains(p.steps[0][1], bobPW) {
		t.Errorf("steps %v", p.steps)
	}
}

func TestWindowsGrantAccessAndSanitize(t *testing.T) {
	loggedIn := "SYSTEM\nroot\nDWM-1\nAlice\n"
	w, f, _ := fakeWindows(t, winTarget, func(c Command) (Result, error) {
		if c.Name == "logged in users" {
			return Result{Stdout: []byte(loggedIn)}, nil
		}
		return Result{}, nil
	})
	if err := w.GrantAccess(t.Context(), "198.51.100.77"); err != nil {
		t.Fatal(err)
	}
	fw := stdinOf(f, "firewall")
	if !strings.Contains(fw, "-LocalPort 22 -RemoteAddress '198.51.100.77'") || !strings.Contains(fw, "-LocalPort 3389 -RemoteAddress '198.51.100.77'") ||
		strings.Contains(fw, "'Any'") {
		t.Fatalf("grant_access firewall: %s", fw)
	}

	f.cmds = nil
	err := w.Sanitize(t.Context(), []string{"alice"})
	if !errors.Is(err, ErrUserLoggedIn) || !strings.Contains(err.Error(), "alice") {
		t.Fatalf("Sanitize with alice logged in = %v", err)
	}
	if got := strings.Join(f.names(), ","); got != "logged in users" {
		t.Fatalf("Sanitize went on after finding a user: %s", got)
	}

	loggedIn = "SYSTEM\nLOCAL SERVICE\nroot\nAdministrator\nUMFD-0\nWIN$\n"
	f.cmds = nil
	for range 2 {
		if err := w.Sanitize(t.Context(), []string{"alice", "bob"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(f.names(), ","); got != "logged in users,remove users,firewall,logged in users,remove users,firewall" {
		t.Fatalf("commands %s", got)
	}
	rm := stdinOf(f, "remove users")
	if !strings.Contains(rm, "$names = @('alice', 'bob')") || !strings.Contains(rm, "Remove-LocalUser -Name $n") ||
		!strings.Contains(rm, "$_.Description -eq 'vclq reservation user'") {
		t.Fatalf("remove users script: %s", rm)
	}
	if fw := stdinOf(f, "firewall"); !strings.Contains(fw, "-LocalPort 22 -RemoteAddress 'Any'") || strings.Contains(fw, "198.51.100.77") {
		t.Fatalf("sanitize did not remove the exception: %s", fw)
	}
	checkArgv(t, f)
}

func TestWindowsPreCaptureAndStatus(t *testing.T) {
	w, f, _ := fakeWindows(t, winTarget, func(c Command) (Result, error) {
		switch c.Name {
		case "read currentimage.txt":
			return Result{Stdout: []byte("win10-base-v2\r\nid=5\r\nimagerevision_id=50\r\nvcld_post_load=success (2026-11-24 01:02:03)\r\n")}, nil
		}
		return Result{}, nil
	})
	st, err := w.NodeStatus(t.Context())
	if err != nil || st.ImageName != "win10-base-v2" || st.RevisionID != 50 || !st.PostLoad {
		t.Fatalf("NodeStatus = %+v, %v", st, err)
	}
	f.cmds = nil
	if err := w.PreCapture(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.names(), ","); got != "logged in users,remove users,firewall,untag,shutdown" {
		t.Fatalf("commands %s", got)
	}
	if u := stdinOf(f, "untag"); !strings.Contains(u, "$_ -notlike 'vcld_post_load=*' -and $_ -notlike 'vcld_tainted=*'") {
		t.Fatalf("untag: %s", u)
	}
	if s := stdinOf(f, "shutdown"); !strings.Contains(s, "shutdown.exe /s /t 5 /f") {
		t.Fatalf("shutdown: %s", s)
	}

	// No currentimage.txt.
	w2, _, _ := fakeWindows(t, winTarget, func(c Command) (Result, error) {
		return Result{ExitStatus: 3}, &CommandError{Name: c.Name, ExitStatus: 3}
	})
	if _, err := w2.NodeStatus(t.Context()); !errors.Is(err, ErrNoCurrentImage) {
		t.Fatalf("NodeStatus without the file = %v", err)
	}
}

func TestParseCurrentImage(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    NodeStatus
		wantErr error
		ready   Readiness
	}{
		{name: "fresh", in: "img-a\nid=1\nimagerevision_id=10\ncomputer_id=3\n",
			want: NodeStatus{ImageName: "img-a", ImageID: 1, RevisionID: 10, ComputerID: 3}, ready: PostLoad},
		{name: "post-loaded", in: "img-a\nid=1\nimagerevision_id=10\nvcld_post_load=success (2026-11-24 01:02:03)\n",
			want: NodeStatus{ImageName: "img-a", ImageID: 1, RevisionID: 10, PostLoad: true}, ready: Ready},
		{name: "tainted", in: "img-a\nid=1\nimagerevision_id=10\nvcld_post_load=success\nvcld_tainted=user logged in\n",
			want: NodeStatus{ImageName: "img-a", ImageID: 1, RevisionID: 10, PostLoad: true, Tainted: true}, ready: Reload},
		{name: "other revision", in: "img-a\nid=1\nimagerevision_id=11\nvcld_post_load=success\n",
			want: NodeStatus{ImageName: "img-a", ImageID: 1, RevisionID: 11, PostLoad: true}, ready: Reload},
		{name: "other image", in: "img-b\nid=2\nimagerevision_id=10\n",
			want: NodeStatus{ImageName: "img-b", ImageID: 2, RevisionID: 10}, ready: Reload},
		{name: "crlf", in: "img-a\r\nid=1\r\nimagerevision_id=10\r\n",
			want: NodeStatus{ImageName: "img-a", ImageID: 1, RevisionID: 10}, ready: PostLoad},
		{name: "failed post-load", in: "img-a\nimagerevision_id=10\nvcld_post_load=failed\n",
			want: NodeStatus{ImageName: "img-a", RevisionID: 10}, ready: PostLoad},
		{name: "empty", in: "", wantErr: ErrNoCurrentImage},
		{name: "no name", in: "id=1\n", wantErr: ErrNoCurrentImage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCurrentImage([]byte(tc.in))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.Fields = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if r := got.For(messages.Image{Name: "img-a", RevisionID: 10}); r != tc.ready {
				t.Fatalf("For = %s, want %s", r, tc.ready)
			}
		})
	}
}

func TestFirewallRules(t *testing.T) {
	got := firewallRules("198.51.100.1", "", false)
	want := `*filter
:VCLQ - [0:0]
-A VCLQ -i lo -m comment --comment "vclq loopback" -j ACCEPT
-A VCLQ -m conntrack --ctstate ESTABLISHED,RELATED -m comment --comment "vclq established" -j ACCEPT
-A VCLQ -s 198.51.100.1/32 -m comment --comment "vclq management node" -j ACCEPT
-A VCLQ -p tcp --dport 22 -m comment --comment "vclq ssh" -j ACCEPT
-A VCLQ -m comment --comment "vclq default deny" -j DROP
COMMIT
`
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	v6 := firewallRules("198.51.100.1", "2001:db8::7", true)
	if !strings.Contains(v6, "-A VCLQ -p tcp -s 2001:db8::7/128 --dport 22") || strings.Contains(v6, "198.51.100.1") ||
		!strings.Contains(v6, "ipv6-icmp") {
		t.Fatalf("v6 rules:\n%s", v6)
	}
	// A v6 user address leaves IPv4 SSH closed to everyone but the management node.
	v4 := firewallRules("198.51.100.1", "2001:db8::7", false)
	if strings.Contains(v4, "--dport 22") {
		t.Fatalf("v4 rules open SSH:\n%s", v4)
	}
}

func TestParseLoggedIn(t *testing.T) {
	out := "    0 root\n  101 sshd\n 1000 alice\n 1000 alice\n65534 nobody\n 2001 bob\n---\nroot     pts/0  2026-11-24 01:00\ncarol    pts/1  2026-11-24 01:00\n"
	if got := strings.Join(parseLoggedIn(out), ","); got != "alice,bob,carol" {
		t.Fatalf("parseLoggedIn = %s", got)
	}
	if got := parseLoggedIn("    0 root\n---\n"); len(got) != 0 {
		t.Fatalf("parseLoggedIn = %v", got)
	}
}

func TestWrapTimeout(t *testing.T) {
	got := wrapTimeout(Command{Line: "echo 'x'"}, 0)
	if got != `if command -v timeout >/dev/null 2>&1; then exec timeout -k 2 1 sh -c 'echo '\''x'\'''; else exec sh -c 'echo '\''x'\'''; fi` {
		t.Fatalf("wrapTimeout = %s", got)
	}
}
