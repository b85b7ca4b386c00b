package messages_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v5"

	"github.com/vclq/vclq/messages"
)

// Characters that must never reach a file name, VM name, account or command from a
// message, whatever the field.
const shellMeta = ";$`'\"\\|&<>(){}*?!#~\n\r\t\x00"

// assertSafe fails if s is not plain ASCII free of shell metacharacters (spaces allowed
// only where allowSpace).
func assertSafe(t *testing.T, field, s string, allowSpace bool) {
	t.Helper()
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || strings.IndexByte(shellMeta, c) >= 0 || (!allowSpace && c == ' ') {
			t.Fatalf("%s %q holds %q", field, s, c)
		}
	}
	if strings.HasPrefix(s, "-") {
		t.Fatalf("%s %q starts with '-'", field, s)
	}
}

func assertNoDotDot(t *testing.T, field, s string) {
	t.Helper()
	for _, seg := range strings.FieldsFunc(s, func(r rune) bool { return r == '/' || r == ' ' }) {
		if seg == ".." || seg == "." {
			t.Fatalf("%s %q has a %q segment", field, s, seg)
		}
	}
}

func assertSSHKey(t *testing.T, k string) {
	t.Helper()
	if strings.ContainsAny(k, "\n\r\x00\"'`$;,\\") {
		t.Fatalf("ssh key %q holds a forbidden character", k)
	}
	f := strings.Split(k, " ")
	if len(f) < 2 || len(f) > 3 {
		t.Fatalf("ssh key %q is not type base64 [comment]", k)
	}
	switch f[0] {
	case "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
		"sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com":
	default:
		t.Fatalf("ssh key %q has options or an unknown type", k)
	}
	if len(f) == 3 {
		assertSafe(t, "ssh key comment", f[2], false)
	}
}

func assertSafeRequest(t *testing.T, r *messages.Request) {
	t.Helper()
	hosts := map[string]string{
		"computer.hostname": r.Computer.Hostname, "computer.short_name": r.Computer.ShortName,
		"vmhost.hostname": r.VMHost.Hostname, "image.name": r.Image.Name,
		"request.state": r.Request.State, "kind": string(r.Kind), "image.os_type": r.Image.OSType,
		"vmhost.profile.vmdisk": r.VMHost.Profile.VMDisk,
		"computer.private_ip":   r.Computer.PrivateIP, "computer.public_ip": r.Computer.PublicIP,
		"computer.eth0_mac": r.Computer.Eth0MAC, "computer.eth1_mac": r.Computer.Eth1MAC,
		"remote_ip": r.RemoteIP, "management_node_ip": r.ManagementNodeIP,
	}
	if r.NextImage != nil {
		hosts["next_image.name"] = r.NextImage.Name
	}
	if r.TargetImage != nil {
		hosts["target_image.name"] = r.TargetImage.Name
	}
	for f, s := range hosts {
		assertSafe(t, f, s, false)
		if strings.Contains(s, "..") {
			t.Fatalf("%s %q contains '..'", f, s)
		}
	}
	p := r.VMHost.Profile
	for f, s := range map[string]string{
		"datastore_path": p.DatastorePath, "vm_path": p.VMPath, "repository_path": p.RepositoryPath,
		"virtual_switch0": p.VirtualSwitch0, "virtual_switch1": p.VirtualSwitch1,
		"virtual_switch2": p.VirtualSwitch2, "virtual_switch3": p.VirtualSwitch3,
		"image.os_name": r.Image.OSName,
	} {
		assertSafe(t, f, strings.NewReplacer("(", "", ")", "").Replace(s), true)
		assertNoDotDot(t, f, s)
	}
	for _, u := range r.Users {
		assertSafe(t, "login", u.Login, false)
		if messages.ReservedLogin(u.Login) {
			t.Fatalf("reserved login %q accepted", u.Login)
		}
		if u.UID != 0 && u.UID < 1000 {
			t.Fatalf("system uid %d accepted", u.UID)
		}
		for _, k := range u.SSHKeys {
			assertSSHKey(t, k)
		}
	}
	if r.Computer.ShortName != messages.ShortName(r.Computer.Hostname) {
		t.Fatal("short name is not the hostname's first label")
	}
}

// seedFiles adds every testdata example and a few mutations of each.
func seedFiles(f *testing.F, match func(string) bool) {
	files, _ := filepath.Glob("testdata/*.json")
	for _, name := range files {
		if !match(filepath.Base(name)) {
			continue
		}
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
		var compact bytes.Buffer
		_ = json.Compact(&compact, data)
		f.Add(compact.Bytes())
		for _, m := range [][2]string{
			{`"schema": 1`, `"schema": 2`},
			{`"alice"`, `"root"`},
			{`"alice"`, `"al;ce"`},
			{`vm-031.vcl`, `vm-031..vcl`},
			{`192.0.2.31`, `192.0.2.031`},
			{`"/vmfs/volumes/datastore1"`, `"/vmfs/volumes/../x"`},
			{`alice@laptop`, `alice@laptop\nssh-rsa AAAA`},
			{`"ssh-ed25519 `, `"command=\"id\" ssh-ed25519 `},
			{`"kind": "new"`, `"kind": "reserved"`},
			{`"kind": "reclaim"`, `"kind": "image"`},
			{`"phase": "end"`, `"phase": "info"`},
			{`"outcome": "success"`, `"outcome": "rejected"`},
			{`"worker": "mn1`, `"worker": "mn 1`},
			{`"id": `, `"ID": `},
			{`{`, `{"x":null,`},
		} {
			if mut := bytes.Replace(data, []byte(m[0]), []byte(m[1]), 1); !bytes.Equal(mut, data) {
				f.Add(mut)
			}
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	seedFiles(f, func(n string) bool { return !strings.HasPrefix(n, "result") && n != "loadlog.json" })
	schemas := map[messages.Kind]*jsonschema.Schema{}
	for _, k := range messages.Kinds {
		schemas[k] = compileSchema(f, "request-"+string(k))
	}
	f.Add([]byte(`{"schema":1}`))
	f.Add([]byte(`{"schema":1,"kind":"new","users":[{"login":"a"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkRequest(t, data, schemas)
	})
}

// checkRequest decodes data and, if it is accepted, checks everything an accepted
// request must satisfy.
func checkRequest(t *testing.T, data []byte, schemas map[messages.Kind]*jsonschema.Schema) {
	_ = messages.HintFrom(data)
	r, err := messages.DecodeRequest(data)
	if err != nil {
		if r != nil {
			t.Fatal("request returned with an error")
		}
		return
	}
	if len(data) > messages.MaxMessageSize {
		t.Fatal("oversize payload accepted")
	}
	if err := r.Validate(); err != nil {
		t.Fatalf("accepted but does not re-validate: %v", err)
	}
	if err := schemaValid(t, schemas[r.Kind], data); err != nil {
		t.Fatalf("accepted by the decoder but not by schema request-%s: %v", r.Kind, err)
	}
	assertSafeRequest(t, r)
	enc, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("re-encode: %v", err)
	}
	r2, err := messages.DecodeRequest(enc)
	if err != nil {
		t.Fatalf("re-encoded request does not decode: %v\n%s", err, enc)
	}
	enc2, _ := json.Marshal(r2)
	if !bytes.Equal(enc, enc2) {
		t.Fatalf("round trip differs:\n%s\n%s", enc, enc2)
	}
	if r.MsgID() != r2.MsgID() {
		t.Fatal("MsgID differs after a round trip")
	}
	h := messages.HintFrom(data)
	if h.Kind != r.Kind || h.ReservationID != r.Reservation.ID || h.RequestID != r.Request.ID || h.ComputerID != r.Computer.ID {
		t.Fatalf("HintFrom %+v disagrees with the decoded request", h)
	}
}

// requestStringFields are the string fields FuzzRequestFields replaces, by path in the
// reserved example.
var requestStringFields = []string{
	"computer.hostname", "computer.short_name", "computer.private_ip", "computer.public_ip",
	"computer.eth0_mac", "vmhost.hostname", "vmhost.profile.datastore_path",
	"vmhost.profile.vm_path", "vmhost.profile.repository_path", "vmhost.profile.virtual_switch0",
	"vmhost.profile.virtual_switch1", "image.name", "image.os_name", "users.0.login",
	"users.0.ssh_keys.0", "users.1.login", "remote_ip", "management_node_ip", "request.state",
	"request.laststate", "request.start", "request.modified",
}

// FuzzRequestFields puts arbitrary strings into one field of a valid request at a time,
// so that the fuzzer spends its time on values rather than on JSON syntax.
func FuzzRequestFields(f *testing.F) {
	schemas := map[messages.Kind]*jsonschema.Schema{}
	for _, k := range messages.Kinds {
		schemas[k] = compileSchema(f, "request-"+string(k))
	}
	base := exampleMap(f, "reserved")
	for i := range requestStringFields {
		for _, h := range append([]string{"vm-031", "192.0.2.9", "alice", keyRSA, "[ds1] a"}, hostile[:8]...) {
			f.Add(uint8(i), h)
		}
	}
	f.Fuzz(func(t *testing.T, field uint8, value string) {
		m := deepCopy(base)
		path := requestStringFields[int(field)%len(requestStringFields)]
		if path == "users.0.ssh_keys.0" {
			obj(m, "users.0")["ssh_keys"] = []any{value}
		} else {
			i := strings.LastIndex(path, ".")
			parent, key := "", path
			if i >= 0 {
				parent, key = path[:i], path[i+1:]
			}
			obj(m, parent)[key] = value
		}
		data, err := json.Marshal(m)
		if err != nil {
			t.Skip()
		}
		checkRequest(t, data, schemas)
	})
}

func deepCopy(m map[string]any) map[string]any {
	var c map[string]any
	data, _ := json.Marshal(m)
	_ = json.Unmarshal(data, &c)
	return c
}

func FuzzDecodeEvents(f *testing.F) {
	seedFiles(f, func(n string) bool { return strings.HasPrefix(n, "result") || n == "loadlog.json" })
	loadlogSchema, resultSchema := compileSchema(f, "loadlog"), compileSchema(f, "result")
	f.Fuzz(func(t *testing.T, data []byte) {
		if l, err := messages.DecodeLoadlog(data); err == nil {
			if err := l.Validate(); err != nil {
				t.Fatalf("accepted loadlog does not re-validate: %v", err)
			}
			if err := schemaValid(t, loadlogSchema, data); err != nil {
				t.Fatalf("loadlog accepted by the decoder but not by its schema: %v", err)
			}
			assertSafe(t, "worker", l.Worker, false)
			assertSafe(t, "name", l.Name, false)
			if !utf8.ValidString(l.Info) || strings.ContainsAny(l.Info, "\n\r\x00\x1b") {
				t.Fatalf("info %q", l.Info)
			}
			enc, _ := json.Marshal(l)
			l2, err := messages.DecodeLoadlog(enc)
			if err != nil {
				t.Fatalf("re-encoded loadlog does not decode: %v\n%s", err, enc)
			}
			if enc2, _ := json.Marshal(l2); !bytes.Equal(enc, enc2) || l.MsgID() != l2.MsgID() {
				t.Fatalf("loadlog round trip differs:\n%s\n%s", enc, enc2)
			}
		} else if l != nil {
			t.Fatal("loadlog returned with an error")
		}
		if r, err := messages.DecodeResult(data); err == nil {
			if err := r.Validate(); err != nil {
				t.Fatalf("accepted result does not re-validate: %v", err)
			}
			if err := schemaValid(t, resultSchema, data); err != nil {
				t.Fatalf("result accepted by the decoder but not by its schema: %v", err)
			}
			assertSafe(t, "worker", r.Worker, false)
			assertSafe(t, "error_code", r.ErrorCode, false)
			assertSafe(t, "ip", r.IP, false)
			if !utf8.ValidString(r.Error) || strings.ContainsAny(r.Error, "\n\r\x00\x1b") {
				t.Fatalf("error %q", r.Error)
			}
			for _, p := range r.Passwords {
				assertSafe(t, "login", p.Login, false)
			}
			if r.NewImage != nil {
				assertSafe(t, "new_image.name", r.NewImage.Name, false)
			}
			enc, _ := json.Marshal(r)
			r2, err := messages.DecodeResult(enc)
			if err != nil {
				t.Fatalf("re-encoded result does not decode: %v\n%s", err, enc)
			}
			if enc2, _ := json.Marshal(r2); !bytes.Equal(enc, enc2) || r.MsgID() != r2.MsgID() {
				t.Fatalf("result round trip differs:\n%s\n%s", enc, enc2)
			}
		} else if r != nil {
			t.Fatal("result returned with an error")
		}
	})
}

func FuzzValidators(f *testing.F) {
	for _, s := range append([]string{
		"vm-031.vcl.example.edu", "192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "00:50:56:00:00:1f",
		"alice", "vmwarelinux-centos7-v3", "/vmfs/volumes/datastore1", "[datastore1] vms",
		"VCL Private", keyEd25519, keyRSA, keyECDSA, "mn1-3412",
	}, hostile...) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if messages.ValidHostname(s) == nil {
			assertSafe(t, "hostname", s, false)
			if len(s) > messages.MaxHostnameLen || strings.Contains(s, "..") || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") {
				t.Fatalf("hostname %q", s)
			}
			if messages.ValidShortName(messages.ShortName(s)) != nil {
				t.Fatalf("hostname %q has an invalid short name", s)
			}
		}
		if messages.ValidShortName(s) == nil {
			assertSafe(t, "short name", s, false)
			if strings.Contains(s, ".") || messages.ValidHostname(s) != nil {
				t.Fatalf("short name %q", s)
			}
		}
		if messages.ValidIP(s) == nil {
			assertSafe(t, "ip", s, false)
			if strings.ContainsAny(s, "%/[]") {
				t.Fatalf("ip %q", s)
			}
		}
		if messages.ValidMAC(s) == nil && len(s) != 17 {
			t.Fatalf("mac %q", s)
		}
		if messages.ValidUsername(s) == nil {
			assertSafe(t, "username", s, false)
			if s != strings.ToLower(s) || len(s) > messages.MaxUsernameLen {
				t.Fatalf("username %q", s)
			}
		}
		if messages.ValidImageName(s) == nil {
			assertSafe(t, "image name", s, false)
			if strings.ContainsAny(s, "/") || strings.Contains(s, "..") || strings.HasPrefix(s, ".") {
				t.Fatalf("image name %q", s)
			}
		}
		if messages.ValidDatastorePath(s) == nil {
			assertSafe(t, "path", s, true)
			assertNoDotDot(t, "path", s)
		}
		if messages.ValidSwitchName(s) == nil {
			assertSafe(t, "switch", s, true)
		}
		if messages.ValidWorker(s) == nil {
			assertSafe(t, "worker", s, false)
		}
		if messages.ValidSSHPublicKey(s) == nil {
			assertSSHKey(t, s)
		}
		if messages.ValidText(s, messages.MaxInfoLen) == nil && (!utf8.ValidString(s) || strings.ContainsAny(s, "\n\r\x00")) {
			t.Fatalf("text %q", s)
		}
		if c := messages.CleanText(s, 100); messages.ValidText(c, 100) != nil {
			t.Fatalf("CleanText(%q) = %q is not valid text", s, c)
		}
	})
}
