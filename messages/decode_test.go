package messages_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/messages"
)

func readExample(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name + ".json")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func exampleMap(t testing.TB, name string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(readExample(t, name), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// obj walks a dotted path of objects ("computer", "vmhost.profile", "users.0").
func obj(m map[string]any, path string) map[string]any {
	if path == "" {
		return m
	}
	var cur any = m
	for _, p := range strings.Split(path, ".") {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[p]
		case []any:
			i := int(p[0] - '0')
			cur = c[i]
		}
	}
	return cur.(map[string]any)
}

func marshal(t testing.TB, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestDecodeRequestExamples(t *testing.T) {
	for _, k := range messages.Kinds {
		t.Run(string(k), func(t *testing.T) {
			r, err := messages.DecodeRequest(readExample(t, string(k)))
			if err != nil {
				t.Fatal(err)
			}
			if r.Kind != k || r.Schema != messages.SchemaVersion {
				t.Fatalf("kind %s schema %d", r.Kind, r.Schema)
			}
			// Re-encoding and decoding gives the same request.
			again, err := messages.DecodeRequest(marshal(t, r))
			if err != nil {
				t.Fatalf("re-decode: %v", err)
			}
			if !bytes.Equal(marshal(t, r), marshal(t, again)) {
				t.Fatal("round trip changed the request")
			}
			if s, ok := messages.KindFromSubject(k.Subject()); !ok || s != k {
				t.Fatalf("KindFromSubject(%s)", k.Subject())
			}
		})
	}
}

func TestDecodeRequestRejects(t *testing.T) {
	type mut struct {
		name   string
		kind   string // example to start from
		mutate func(m map[string]any)
		is     error // besides ErrInvalid
	}
	set := func(path, key string, v any) func(map[string]any) {
		return func(m map[string]any) { obj(m, path)[key] = v }
	}
	del := func(path, key string) func(map[string]any) {
		return func(m map[string]any) { delete(obj(m, path), key) }
	}
	cases := []mut{
		// unknown fields, at every level and case-folded
		{"unknown top", "new", set("", "password", "hunter2"), nil},
		{"unknown request", "new", set("request", "pw", "x"), nil},
		{"unknown computer", "new", set("computer", "extra", 1), nil},
		{"unknown profile", "new", set("vmhost.profile", "username", "root"), nil},
		{"unknown profile password", "new", set("vmhost.profile", "password", "x"), nil},
		{"unknown user", "new", set("users.0", "password", "x"), nil},
		{"unknown image", "new", set("image", "Name2", "x"), nil},
		{"unknown target_image", "image", set("target_image", "size", 1), nil},
		{"case-folded key", "new", func(m map[string]any) { m["Kind"] = m["kind"]; delete(m, "kind") }, nil},
		{"case-folded nested key", "new", func(m map[string]any) {
			c := obj(m, "computer")
			c["Hostname"] = c["hostname"]
			delete(c, "hostname")
		}, nil},
		// missing required fields at each level
		{"missing kind", "new", del("", "kind"), nil},
		{"missing request", "new", del("", "request"), nil},
		{"missing reservation", "new", del("", "reservation"), nil},
		{"missing computer", "new", del("", "computer"), nil},
		{"missing vmhost", "new", del("", "vmhost"), nil},
		{"missing image", "new", del("", "image"), nil},
		{"missing request.id", "new", del("request", "id"), nil},
		{"missing request.state", "new", del("request", "state"), nil},
		{"missing request.start", "new", del("request", "start"), nil},
		{"missing request.end", "new", del("request", "end"), nil},
		{"missing reservation.id", "new", del("reservation", "id"), nil},
		{"missing computer.hostname", "new", del("computer", "hostname"), nil},
		{"missing computer.short_name", "new", del("computer", "short_name"), nil},
		{"missing computer.private_ip", "new", del("computer", "private_ip"), nil},
		{"missing computer.ram_mb", "new", del("computer", "ram_mb"), nil},
		{"missing computer.cpus", "new", del("computer", "cpus"), nil},
		{"missing vmhost.profile", "new", del("vmhost", "profile"), nil},
		{"missing profile.datastore_path", "new", del("vmhost.profile", "datastore_path"), nil},
		{"missing profile.virtual_switch0", "new", del("vmhost.profile", "virtual_switch0"), nil},
		{"missing profile.vmdisk", "new", del("vmhost.profile", "vmdisk"), nil},
		{"missing image.revision", "new", del("image", "revision"), nil},
		{"missing image.os_type", "new", del("image", "os_type"), nil},
		{"missing users[0].id", "new", del("users.0", "id"), nil},
		{"missing users[0].login", "new", del("users.0", "login"), nil},
		{"missing target_image.revision", "image", del("target_image", "revision"), nil},
		{"missing next_image.revision", "reclaim", del("next_image", "revision"), nil},
		// null is not a value
		{"null group", "new", set("", "request", nil), nil},
		{"null revision", "new", set("image", "revision", nil), nil},
		{"null optional", "new", set("request", "laststate", nil), nil},
		{"null users", "new", set("", "users", nil), nil},
		{"null ssh key", "new", set("users.0", "ssh_keys", []any{nil}), nil},
		// wrong types
		{"id as string", "new", set("request", "id", "5001"), nil},
		{"id as float", "new", set("request", "id", 5001.5), nil},
		{"id negative", "new", set("request", "id", -1), nil},
		{"id zero", "new", set("reservation", "id", 0), nil},
		{"id above 2^53", "new", set("reservation", "id", int64(1)<<53), nil},
		{"ram as string", "new", set("computer", "ram_mb", "2048"), nil},
		{"hostname as number", "new", set("computer", "hostname", 31), nil},
		{"users as object", "new", set("", "users", map[string]any{}), nil},
		{"ssh_keys as string", "new", set("users.0", "ssh_keys", "ssh-ed25519 AAAA"), nil},
		{"root_access as string", "new", set("users.0", "root_access", "true"), nil},
		{"start not a time", "new", set("request", "start", "tomorrow"), nil},
		{"start as number", "new", set("request", "start", 1700000000), nil},
		{"start lower-case t/z", "new", set("request", "start", "2026-11-24t10:00:00z"), nil},
		{"start without zone", "new", set("request", "start", "2026-11-24T10:00:00"), nil},
		{"start with space", "new", set("request", "start", "2026-11-24 10:00:00Z"), nil},
		{"group as array", "new", set("", "computer", []any{}), nil},
		// values
		{"bad kind", "new", set("", "kind", "delete"), nil},
		{"bad state", "new", set("request", "state", "new;id"), nil},
		{"state of another kind", "new", set("request", "state", "reserved"), nil},
		{"reclaim in state new", "reclaim", set("request", "state", "new"), nil},
		{"image in state inuse", "image", set("request", "state", "inuse"), nil},
		{"end before start", "new", set("request", "end", "2026-11-24T09:00:00Z"), nil},
		{"end before start, reserved", "reserved", set("request", "end", "2026-11-24T09:00:00Z"), nil},
		{"hostname with shell", "new", set("computer", "hostname", "vm-031;reboot"), nil},
		{"short name mismatch", "new", set("computer", "short_name", "vm-032"), nil},
		{"private ip zoned", "new", set("computer", "private_ip", "fe80::1%eth0"), nil},
		{"private ip leading zero", "new", set("computer", "private_ip", "192.0.2.031"), nil},
		{"mac", "new", set("computer", "eth0_mac", "00-50-56-00-00-1f"), nil},
		{"cpus zero", "new", set("computer", "cpus", 0), nil},
		{"cpus huge", "new", set("computer", "cpus", 100000), nil},
		{"path traversal", "new", set("vmhost.profile", "datastore_path", "/vmfs/volumes/../../etc"), nil},
		{"switch", "new", set("vmhost.profile", "virtual_switch0", "VCL$(id)"), nil},
		{"vmdisk", "new", set("vmhost.profile", "vmdisk", "linked"), nil},
		{"image name", "new", set("image", "name", "../img"), nil},
		{"os_type", "new", set("image", "os_type", "macos"), nil},
		{"os_name shell", "new", set("image", "os_name", "CentOS`id`"), nil},
		{"login", "new", set("users.0", "login", "alice;id"), nil},
		{"login root", "new", set("users.0", "login", "root"), nil},
		{"login daemon", "new", set("users.0", "login", "daemon"), nil},
		{"uid root", "new", set("users.0", "uid", -1), nil},
		{"empty optional string", "new", set("computer", "public_ip", ""), nil},
		{"empty laststate", "new", set("request", "laststate", ""), nil},
		{"uid low", "new", set("users.0", "uid", 999), nil},
		{"ssh key command", "new", set("users.0", "ssh_keys", []any{`command="id" ` + keyEd25519}), nil},
		{"ssh key two lines", "new", set("users.0", "ssh_keys", []any{keyEd25519 + "\n" + keyRSA}), nil},
		{"duplicate login", "reserved", func(m map[string]any) {
			u := obj(m, "users.1")
			u["login"] = "alice"
		}, nil},
		{"duplicate uid", "reserved", set("users.1", "uid", 20001), nil},
		{"duplicate user id", "reserved", set("users.1", "id", 900), nil},
		{"remote ip", "reserved", set("", "remote_ip", "198.51.100.77 "), nil},
		{"management ip", "new", set("", "management_node_ip", "0.0.0.0"), nil},
		// kind-specific requirements
		{"reserved without remote_ip", "reserved", del("", "remote_ip"), nil},
		{"reserved without users", "reserved", del("", "users"), nil},
		{"reserved with empty users", "reserved", set("", "users", []any{}), nil},
		{"image without target_image", "image", del("", "target_image"), nil},
		{"image target same name", "image", set("target_image", "name", "vmwarelinux-centos7-v3"), nil},
		{"image target bad name", "image", set("target_image", "name", "x y"), nil},
		{"target_image on new", "new", set("", "target_image", map[string]any{"image_id": 1, "name": "x", "revision_id": 2, "revision": 1}), nil},
		{"target_image on reload", "reload", set("", "target_image", map[string]any{"image_id": 1, "name": "x", "revision_id": 2, "revision": 1}), nil},
		// schema versions
		{"schema 2", "new", set("", "schema", 2), messages.ErrSchema},
		{"schema 0", "new", set("", "schema", 0), messages.ErrSchema},
		{"schema string", "new", set("", "schema", "1"), messages.ErrSchema},
		{"schema float", "new", set("", "schema", 1.5), messages.ErrSchema},
		{"schema null", "new", set("", "schema", nil), messages.ErrSchema},
		{"schema missing", "new", del("", "schema"), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := exampleMap(t, c.kind)
			c.mutate(m)
			data := marshal(t, m)
			r, err := messages.DecodeRequest(data)
			if err == nil {
				t.Fatalf("accepted: %s", data)
			}
			if r != nil {
				t.Error("returned a request with the error")
			}
			if !errors.Is(err, messages.ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("error does not wrap %v: %v", c.is, err)
			}
			if c.is == nil && errors.Is(err, messages.ErrSchema) {
				t.Errorf("unexpected ErrSchema: %v", err)
			}
		})
	}
}

func TestDecodeRequestRaw(t *testing.T) {
	good := readExample(t, "new")
	inner := bytes.TrimSpace(good)
	inner = inner[1 : len(inner)-1] // the members, without braces
	big := append([]byte(`{"schema":1,"pad":"`), bytes.Repeat([]byte("x"), messages.MaxMessageSize)...)
	big = append(big, `"}`...)
	cases := []struct {
		name string
		data []byte
		is   error
	}{
		{"empty", nil, nil},
		{"spaces", []byte("  \n"), nil},
		{"null", []byte("null"), nil},
		{"array", []byte("[1]"), nil},
		{"string", []byte(`"x"`), nil},
		{"truncated", good[:len(good)/2], nil},
		{"trailing object", append(append([]byte{}, good...), good...), nil},
		{"trailing garbage", append(append([]byte{}, good...), "x"...), nil},
		{"trailing comma", append(append([]byte{}, good...), ","...), nil},
		{"duplicate key", append(append([]byte(`{"kind":"image",`), inner...), '}'), nil},
		{"duplicate schema", append(append([]byte(`{"schema":2,`), inner...), '}'), nil},
		{"oversize", big, messages.ErrTooLarge},
		{"oversize valid", append(append([]byte{}, good...), bytes.Repeat([]byte(" "), messages.MaxMessageSize)...), messages.ErrTooLarge},
		{"number exponent", bytes.Replace(good, []byte(`"ram_mb": 2048`), []byte(`"ram_mb": 2.048e3`), 1), nil},
		{"number decimal", bytes.Replace(good, []byte(`"ram_mb": 2048`), []byte(`"ram_mb": 2048.0`), 1), nil},
		{"invalid utf8 in hostname", bytes.Replace(good, []byte(`vm-031.vcl`), []byte("vm-031\xff.vcl"), 1), nil},
		{"escaped newline in login", bytes.Replace(good, []byte(`"alice"`), []byte(`"ali\nce"`), 1), nil},
		{"unicode escape look-alike", bytes.Replace(good, []byte(`"alice"`), []byte(`"\u0430lice"`), 1), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name != "empty" && c.name != "spaces" && bytes.Equal(c.data, good) {
				t.Fatal("mutation did not apply")
			}
			_, err := messages.DecodeRequest(c.data)
			if err == nil {
				t.Fatalf("accepted %.200q", c.data)
			}
			if !errors.Is(err, messages.ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("error does not wrap %v: %v", c.is, err)
			}
		})
	}
	// Exactly MaxMessageSize bytes is allowed.
	padded := append(append([]byte{}, good...), bytes.Repeat([]byte(" "), messages.MaxMessageSize-len(good))...)
	if _, err := messages.DecodeRequest(padded); err != nil {
		t.Errorf("payload of exactly MaxMessageSize: %v", err)
	}
}

func TestKindStates(t *testing.T) {
	for _, k := range messages.Kinds {
		states := messages.KindStates[k]
		if len(states) == 0 {
			t.Errorf("kind %s has no states", k)
		}
		for _, s := range states {
			if !messages.ValidState(s) {
				t.Errorf("kind %s: %q is not a state", k, s)
			}
			m := exampleMap(t, string(k))
			obj(m, "request")["state"] = s
			if _, err := messages.DecodeRequest(marshal(t, m)); err != nil {
				t.Errorf("kind %s in state %s: %v", k, s, err)
			}
		}
	}
}

func TestValidateReportsAll(t *testing.T) {
	m := exampleMap(t, "new")
	obj(m, "computer")["hostname"] = "bad host"
	obj(m, "users.0")["login"] = "Bad"
	_, err := messages.DecodeRequest(marshal(t, m))
	if err == nil || !strings.Contains(err.Error(), "computer.hostname") || !strings.Contains(err.Error(), "users[0].login") {
		t.Fatalf("want both problems, got %v", err)
	}
}

func TestRequestValidateZero(t *testing.T) {
	var r messages.Request
	if err := r.Validate(); !errors.Is(err, messages.ErrInvalid) {
		t.Fatalf("zero request: %v", err)
	}
}

func TestHintFrom(t *testing.T) {
	cases := []struct {
		name string
		data string
		want messages.Hint
	}{
		{"valid", string(readExample(t, "new")), messages.Hint{Kind: messages.KindNew, ReservationID: 7001, RequestID: 5001, ComputerID: 31}},
		{"invalid but readable", `{"schema":9,"kind":"reserved","reservation":{"id":42},"computer":{"hostname":"a;b"}}`, messages.Hint{Kind: messages.KindReserved, ReservationID: 42}},
		{"unknown kind", `{"kind":"x","reservation":{"id":42}}`, messages.Hint{ReservationID: 42}},
		{"string id", `{"kind":"new","reservation":{"id":"42"}}`, messages.Hint{Kind: messages.KindNew}},
		{"negative id", `{"reservation":{"id":-4},"request":{"id":0}}`, messages.Hint{}},
		{"fractional id", `{"reservation":{"id":4.5}}`, messages.Hint{}},
		{"huge id", `{"reservation":{"id":1e300}}`, messages.Hint{}},
		{"above 2^53", `{"reservation":{"id":9007199254740993}}`, messages.Hint{}},
		{"wrong group type", `{"kind":"image","reservation":[1],"request":{"id":8}}`, messages.Hint{Kind: messages.KindImage, RequestID: 8}},
		{"garbage", `{{{`, messages.Hint{}},
		{"empty", ``, messages.Hint{}},
		{"null", `null`, messages.Hint{}},
		{"array", `[{"kind":"new"}]`, messages.Hint{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := messages.HintFrom([]byte(c.data)); got != c.want {
				t.Errorf("HintFrom = %+v, want %+v", got, c.want)
			}
		})
	}
	big := append([]byte(`{"kind":"new","reservation":{"id":42},"pad":"`), bytes.Repeat([]byte("x"), messages.MaxMessageSize)...)
	big = append(big, `"}`...)
	if got := messages.HintFrom(big); got != (messages.Hint{}) {
		t.Errorf("HintFrom(oversize) = %+v", got)
	}
}

func TestRequestMsgID(t *testing.T) {
	r, err := messages.DecodeRequest(readExample(t, "new"))
	if err != nil {
		t.Fatal(err)
	}
	id := r.MsgID()
	if id != r.MsgID() || id == "" {
		t.Fatal("MsgID is not deterministic")
	}
	if id != "new-7001-"+itoa(r.Request.Modified.UnixNano()) {
		t.Errorf("MsgID = %q", id)
	}
	// The same instant in another zone is the same row.
	c := *r
	c.Request.Modified = r.Request.Modified.In(time.FixedZone("x", 3600))
	if c.MsgID() != id {
		t.Error("MsgID depends on the time zone")
	}
	seen := map[string]bool{id: true}
	for _, f := range []func(*messages.Request){
		func(x *messages.Request) { x.Kind = messages.KindReload },
		func(x *messages.Request) { x.Reservation.ID++ },
		func(x *messages.Request) { x.Request.Modified = x.Request.Modified.Add(time.Microsecond) },
		func(x *messages.Request) { x.Request.Modified = time.Time{} },
	} {
		c := *r
		f(&c)
		if seen[c.MsgID()] {
			t.Errorf("MsgID %q not distinct", c.MsgID())
		}
		seen[c.MsgID()] = true
	}
	var zero messages.Request
	zero.Kind = messages.KindNew
	zero.Reservation.ID = 1
	if got := zero.MsgID(); got != "new-1-0" {
		t.Errorf("MsgID without modified = %q", got)
	}
}

func itoa(n int64) string { return string(marshalNumber(n)) }

func marshalNumber(n int64) []byte { b, _ := json.Marshal(n); return b }

// A reclaim tears down what is left, so a collapsed window (an early delete sets end
// to the moment of deletion) does not stop it; every other kind needs end > start.
func TestDecodeReclaimAcceptsCollapsedWindow(t *testing.T) {
	for _, end := range []string{"2026-11-24T10:00:00Z", "2026-11-24T09:59:59Z"} {
		m := exampleMap(t, "reclaim")
		obj(m, "request")["start"] = "2026-11-24T10:00:00Z"
		obj(m, "request")["end"] = end
		if _, err := messages.DecodeRequest(marshal(t, m)); err != nil {
			t.Errorf("reclaim with end %s: %v", end, err)
		}
		for _, k := range []string{"new", "reserved", "reload", "image"} {
			m := exampleMap(t, k)
			obj(m, "request")["start"] = "2026-11-24T10:00:00Z"
			obj(m, "request")["end"] = end
			if _, err := messages.DecodeRequest(marshal(t, m)); !errors.Is(err, messages.ErrInvalid) {
				t.Errorf("%s with end %s: err = %v, want ErrInvalid", k, end, err)
			}
		}
	}
}
