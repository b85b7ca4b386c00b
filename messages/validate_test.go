package messages_test

import (
	"strings"
	"testing"

	"github.com/vclq/vclq/messages"
)

// hostile values that no validator of a name, path, address or key may accept.
var hostile = []string{
	"", " ", "a;rm -rf /", "$(id)", "`id`", "a`id`", "'a'", `"a"`, `a\b`, "a\nb", "a\rb",
	"a\x00b", "a|b", "a&b", "a>b", "a<b", "a*b", "a?b", "a{b}", "a!b", "a#b", "a%b",
	"../etc", "a/../b", "-rf", "--help", "vm\u2013031", "vm-\u0430bc", "ｖｍ", "a\u200bb",
	"a\tb", "a b\n", "\ufeffa",
}

type vcase struct {
	in string
	ok bool
}

func runValidator(t *testing.T, name string, f func(string) error, cases []vcase, hostileToo bool) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		for _, c := range cases {
			if err := f(c.in); (err == nil) != c.ok {
				t.Errorf("%s(%q) = %v, want ok=%v", name, c.in, err, c.ok)
			}
		}
		if hostileToo {
			for _, h := range hostile {
				if err := f(h); err == nil {
					t.Errorf("%s(%q) accepted a hostile value", name, h)
				}
			}
		}
	})
}

func TestValidHostname(t *testing.T) {
	runValidator(t, "ValidHostname", messages.ValidHostname, []vcase{
		{"vm-031.vcl.example.edu", true},
		{"vm-031", true},
		{"ESX-01.Example.EDU", true},
		{"a", true},
		{"0a.example.edu", true},
		{strings.Repeat("a", 63) + ".example.edu", true},
		{strings.Repeat("a", 64) + ".example.edu", false},
		{strings.Repeat(strings.Repeat("a", 62)+".", 4) + "ab", false}, // 254
		{strings.Repeat(strings.Repeat("a", 62)+".", 4) + "a", true},   // 253
		{"-vm.example.edu", false},
		{"vm-.example.edu", false},
		{"vm..example.edu", false},
		{".example.edu", false},
		{"example.edu.", false},
		{"vm_031.example.edu", false},
		{"vm 031", false},
		{"vm031.example.edu;reboot", false},
		{"vm031.example.edu\n", false},
		{"vm\u0430.example.edu", false}, // Cyrillic a
		{"xn--vm-lla.example.edu", true},
	}, true)
}

func TestValidShortName(t *testing.T) {
	runValidator(t, "ValidShortName", messages.ValidShortName, []vcase{
		{"vm-031", true},
		{"vm-031.example.edu", false},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"vm-", false},
	}, true)
	if got := messages.ShortName("vm-031.vcl.example.edu"); got != "vm-031" {
		t.Errorf("ShortName = %q", got)
	}
	if got := messages.ShortName("vm-031"); got != "vm-031" {
		t.Errorf("ShortName = %q", got)
	}
}

func TestValidIP(t *testing.T) {
	runValidator(t, "ValidIP", messages.ValidIP, []vcase{
		{"192.0.2.31", true},
		{"198.51.100.1", true},
		{"2001:db8::1", true},
		{"::ffff:192.0.2.1", true},
		{"2001:DB8::1", false},          // not canonical
		{"2001:db8:0:0:0:0:0:1", false}, // not canonical
		{"192.0.2.031", false},
		{"192.0.2.1.", false},
		{"192.0.2", false},
		{"192.0.2.256", false},
		{"0x7f.0.0.1", false},
		{"fe80::1%eth0", false},
		{"192.0.2.1/24", false},
		{"192.0.2.1:22", false},
		{"0.0.0.0", false},
		{"::", false},
		{"224.0.0.1", false},
		{"ff02::1", false},
		{" 192.0.2.1", false},
		{"192.0.2.1\n", false},
		{"192.0.2.1;id", false},
		{"[2001:db8::1]", false},
	}, true)
}

func TestValidMAC(t *testing.T) {
	runValidator(t, "ValidMAC", messages.ValidMAC, []vcase{
		{"00:50:56:00:00:1f", true},
		{"00:50:56:00:00:1F", true},
		{"00-50-56-00-00-1f", false},
		{"0050.5600.001f", false},
		{"00:50:56:00:00", false},
		{"00:50:56:00:00:1f:00", false},
		{"00:50:56:00:00:1g", false},
		{"00:50:56:00:00:1f\n", false},
	}, true)
}

func TestValidUsername(t *testing.T) {
	runValidator(t, "ValidUsername", messages.ValidUsername, []vcase{
		{"alice", true},
		{"_svc", true},
		{"bob_2", true},
		{"b-o-b", true},
		{strings.Repeat("a", 32), true},
		{strings.Repeat("a", 33), false},
		{"Alice", false},
		{"1alice", false},
		{"-alice", false},
		{"alice.smith", false},
		{"alice@example.edu", false},
		{"al ice", false},
		{"alice$", false},
		{"\u0430lice", false},
	}, true)
}

func TestReservedLogin(t *testing.T) {
	for _, l := range []string{"root", "administrator", "daemon", "nobody", "sshd", "vcl"} {
		if !messages.ReservedLogin(l) {
			t.Errorf("ReservedLogin(%q) = false", l)
		}
	}
	if messages.ReservedLogin("alice") {
		t.Error("ReservedLogin(alice) = true")
	}
}

func TestValidImageName(t *testing.T) {
	runValidator(t, "ValidImageName", messages.ValidImageName, []vcase{
		{"vmwarelinux-centos7-v3", true},
		{"vmwarewin10-base_v1.2", true},
		{strings.Repeat("a", 100), true},
		{strings.Repeat("a", 101), false},
		{".hidden", false},
		{"-x", false},
		{"a..b", false},
		{"a/b", false},
		{"a b", false},
		{"a\\b", false},
		{"img;reboot", false},
	}, true)
}

func TestValidDatastorePath(t *testing.T) {
	runValidator(t, "ValidDatastorePath", messages.ValidDatastorePath, []vcase{
		{"/vmfs/volumes/datastore1", true},
		{"/vmfs/volumes/datastore1/vms", true},
		{"/", true},
		{"[datastore1] vms", true},
		{"[datastore1]", true},
		{"[data store 1] vms/vcl", true},
		{"/" + strings.Repeat("a", 254), true},
		{"/" + strings.Repeat("a", 255), false},
		{"vmfs/volumes", false},
		{"/vmfs/../etc", false},
		{"/vmfs/..", false},
		{"/vmfs/./x", false},
		{"[datastore1] ../x", false},
		{"[datastore1] vms/../..", false},
		{"[datastore1] a b", false},
		{"[datastore1]vms", false},
		{"[] vms", false},
		{"[ ds] vms", false},
		{"/vmfs/volumes/data store", false},
		{"/vmfs/volumes/$(id)", false},
		{"/vmfs/volumes/ds1\n", false},
		{"/vmfs/volumes/ds1;id", false},
		{"/vmfs/volumes/\u2215etc", false},
	}, true)
}

func TestValidSwitchName(t *testing.T) {
	runValidator(t, "ValidSwitchName", messages.ValidSwitchName, []vcase{
		{"VCL Private", true},
		{"vSwitch0", true},
		{"VM_Network-2.a", true},
		{strings.Repeat("a", 80), true},
		{strings.Repeat("a", 81), false},
		{" VCL", false},
		{"VCL/Private", false},
		{"VCL;Private", false},
	}, true)
}

func TestValidSSHPublicKey(t *testing.T) {
	f := strings.Fields(keyEd25519)
	edData := f[1]
	rsaData := strings.Fields(keyRSA)[1]
	runValidator(t, "ValidSSHPublicKey", messages.ValidSSHPublicKey, []vcase{
		{keyEd25519, true},
		{keyRSA, true},
		{keyECDSA, true},
		{"ssh-ed25519 " + edData, true},
		{"ssh-ed25519 " + edData + " alice@laptop:work+1", true},
		// options
		{`command="id" ` + keyEd25519, false},
		{`no-pty ` + keyEd25519, false},
		{`from="192.0.2.1" ` + keyEd25519, false},
		{`command="/bin/sh",no-pty ssh-ed25519 ` + edData, false},
		// two keys / two lines
		{keyEd25519 + "\n" + keyRSA, false},
		{keyEd25519 + "\n", false},
		{keyEd25519 + "\r\n", false},
		{keyEd25519 + " " + keyRSA, false},
		// comments with metacharacters or spaces
		{"ssh-ed25519 " + edData + " alice laptop", false},
		{"ssh-ed25519 " + edData + " $(id)", false},
		{"ssh-ed25519 " + edData + " `id`", false},
		{"ssh-ed25519 " + edData + " a;b", false},
		{"ssh-ed25519 " + edData + " " + strings.Repeat("c", 101), false},
		// bad base64 / truncated / garbage
		{"ssh-ed25519 AAAA", false},
		{"ssh-ed25519 " + edData[:len(edData)-4], false},
		{"ssh-ed25519 " + edData + "AAAA", false},
		{"ssh-ed25519 !!!!", false},
		{"ssh-ed25519 " + strings.Repeat("A", 68), false},
		// type mismatch
		{"ssh-rsa " + edData, false},
		{"ssh-ed25519 " + rsaData, false},
		{"ecdsa-sha2-nistp384 " + strings.Fields(keyECDSA)[1], false},
		// unsupported types, missing parts, extra whitespace
		{"ssh-dss " + edData, false},
		{"ssh-ed25519-cert-v01@openssh.com " + edData, false},
		{"ssh-ed25519", false},
		{edData, false},
		{"ssh-ed25519  " + edData, false},
		{" " + keyEd25519, false},
		{"# " + keyEd25519, false},
		{"ssh-ed25519 " + edData + strings.Repeat("A", messages.MaxSSHKeyLen), false},
	}, true)
}

func TestValidWorker(t *testing.T) {
	runValidator(t, "ValidWorker", messages.ValidWorker, []vcase{
		{"mn1.vcl.example.edu-3412", true},
		{"worker@mn1:2", true},
		{"my_host-12", true},
		{strings.Repeat("w", 128), true},
		{strings.Repeat("w", 129), false},
		{"mn1/3412", false},
	}, true)
}

func TestValidText(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{
		{"", true},
		{"copied 2.1 GB in 41 s; it's fine: \"ok\" $(x)", true},
		{"tab\tseparated", true},
		{"été ✓", true},
		{"line\nbreak", false},
		{"cr\rhere", false},
		{"nul\x00", false},
		{"esc\x1b[31m", false},
		{"\xff\xfe", false},
		{"sep\u2028", false},
		{"c1\u0085", false},
		{strings.Repeat("x", messages.MaxInfoLen), true},
		{strings.Repeat("x", messages.MaxInfoLen+1), false},
	} {
		if err := messages.ValidText(c.in, messages.MaxInfoLen); (err == nil) != c.ok {
			t.Errorf("ValidText(%q) = %v, want ok=%v", c.in, err, c.ok)
		}
	}
	for _, in := range []string{"a\nb\r\x00c", "\xff\xfe\u2028", strings.Repeat("é", 3000), "ok"} {
		out := messages.CleanText(in, messages.MaxInfoLen)
		if err := messages.ValidText(out, messages.MaxInfoLen); err != nil {
			t.Errorf("CleanText(%q) = %q: %v", in, out, err)
		}
	}
	if got := messages.CleanText("a\nb", 10); got != "a b" {
		t.Errorf("CleanText = %q", got)
	}
	if got := messages.CleanText("ééé", 5); got != "éé" {
		t.Errorf("CleanText cut = %q", got)
	}
}

func TestValidState(t *testing.T) {
	for name, id := range messages.StateIDs {
		if !messages.ValidState(name) || id < 1 {
			t.Errorf("state %s %d", name, id)
		}
	}
	for _, s := range []string{"", "New", "new ", "pending;", "unknown"} {
		if messages.ValidState(s) {
			t.Errorf("ValidState(%q) = true", s)
		}
	}
}

func TestValidLoadstateName(t *testing.T) {
	for _, s := range []string{messages.LoadBegin, messages.LoadTransferVM, messages.LoadWarning, messages.LoadCopyFromPartnerMN} {
		if !messages.ValidLoadstateName(s) {
			t.Errorf("ValidLoadstateName(%q) = false", s)
		}
	}
	for _, s := range []string{"", "transferVM", "myownstep", "begin ", "WARNING;"} {
		if messages.ValidLoadstateName(s) {
			t.Errorf("ValidLoadstateName(%q) = true", s)
		}
	}
	for name := range messages.LoadEstimates {
		if !messages.ValidLoadstateName(name) {
			t.Errorf("estimate for unknown loadstate %q", name)
		}
	}
}
