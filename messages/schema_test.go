package messages_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v5"

	"github.com/vclq/vclq/messages"
)

func compileSchema(t testing.TB, name string) *jsonschema.Schema {
	t.Helper()
	data, err := messages.Schema(name)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	c.AssertFormat = true
	url := "https://github.com/vclq/vclq/messages/schema/" + name + ".schema.json"
	if err := c.AddResource(url, bytes.NewReader(data)); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	s, err := c.Compile(url)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return s
}

// schemaFor maps a testdata example to its schema and Go decoder.
func schemaFor(base string) (schema string, decode func([]byte) error) {
	switch {
	case base == "loadlog":
		return "loadlog", func(b []byte) error { _, err := messages.DecodeLoadlog(b); return err }
	case strings.HasPrefix(base, "result"):
		return "result", func(b []byte) error { _, err := messages.DecodeResult(b); return err }
	}
	return "request-" + base, func(b []byte) error { _, err := messages.DecodeRequest(b); return err }
}

func schemaValid(t testing.TB, s *jsonschema.Schema, data []byte) error {
	t.Helper()
	var v any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return err
	}
	return s.Validate(v)
}

func TestSchemaNames(t *testing.T) {
	files, _ := filepath.Glob("schema/*.schema.json")
	var want []string
	for _, f := range files {
		want = append(want, strings.TrimSuffix(filepath.Base(f), ".schema.json"))
	}
	got := append([]string(nil), messages.SchemaNames()...)
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("SchemaNames %v, files %v", got, want)
	}
	for _, n := range got {
		a, err := messages.Schema(n)
		b, err2 := messages.Schema(n + ".schema.json")
		if err != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("Schema(%s): %v %v", n, err, err2)
		}
		compileSchema(t, n)
	}
	if _, err := messages.Schema("../decode.go"); err == nil {
		t.Error("Schema accepted an unknown name")
	}
}

// TestSchemaPatternsMatchGo checks that every pattern in the schemas is one of the Go
// validation regexps (or one of the few schema-only patterns documented here), and that
// every Go regexp is used by some schema.
func TestSchemaPatternsMatchGo(t *testing.T) {
	schemaOnly := map[string]string{
		// IP addresses: Go parses with net/netip and demands canonical form.
		`^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$`: "ipv4",
		`^[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?::(?:[0-9]{1,3}\.){3}[0-9]{1,3})?$`:                                 "ipv6",
		// ".." in image names and "." / ".." path segments (strings.Contains / FieldsFunc in Go).
		`\.\.`:                        "dotdot",
		`(?:^|[/ ])\.{1,2}(?:$|[/ ])`: "dotseg",
		"^[^\x00-\x08\x0a-\x1f\x7f-\u009f\u2028\u2029]*$": "text (ValidText)",
	}
	goPats := map[string]string{}
	for name, p := range messages.GoPatterns {
		goPats[p] = name
	}
	used := map[string]bool{}
	for _, n := range messages.SchemaNames() {
		data, _ := messages.Schema(n)
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatal(err)
		}
		walk(v, func(p string) {
			if name, ok := goPats[p]; ok {
				used[name] = true
			} else if _, ok := schemaOnly[p]; !ok {
				t.Errorf("%s: pattern %q is not a Go validation pattern", n, p)
			}
		})
	}
	for name := range messages.GoPatterns {
		if !used[name] {
			t.Errorf("Go pattern %s is in no schema", name)
		}
	}
}

func walk(v any, f func(pattern string)) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok && k == "pattern" {
				f(s)
			} else {
				walk(e, f)
			}
		}
	case []any:
		for _, e := range x {
			walk(e, f)
		}
	}
}

// TestSchemasAgreeWithDecoder: every example validates against its schema and decodes;
// every invalid variant is rejected by both.
func TestSchemasAgreeWithDecoder(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.json")
	if len(files) < 7 {
		t.Fatalf("only %d examples", len(files))
	}
	checked := 0
	defer func() { t.Logf("%d invalid variants rejected by both", checked) }()
	for _, f := range files {
		base := strings.TrimSuffix(filepath.Base(f), ".json")
		name, decode := schemaFor(base)
		s := compileSchema(t, name)
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := schemaValid(t, s, data); err != nil {
			t.Errorf("%s does not validate against %s: %v", f, name, err)
		}
		if err := decode(data); err != nil {
			t.Errorf("%s does not decode: %v", f, err)
		}
		for i, mut := range invalidVariants(base) {
			var m map[string]any
			_ = json.Unmarshal(data, &m)
			if !mut.apply(m) {
				continue // does not apply to this example
			}
			bad := marshal(t, m)
			checked++
			if err := schemaValid(t, s, bad); err == nil {
				t.Errorf("%s variant %d (%s) passes schema %s", base, i, mut.name, name)
			}
			if err := decode(bad); err == nil {
				t.Errorf("%s variant %d (%s) passes the Go decoder", base, i, mut.name)
			}
		}
		// Other kinds' schemas reject this request (kind is a const).
		if strings.HasPrefix(name, "request-") {
			for _, k := range messages.Kinds {
				if "request-"+string(k) != name && schemaValid(t, compileSchema(t, "request-"+string(k)), data) == nil {
					t.Errorf("%s validates against request-%s", f, k)
				}
			}
		}
	}
}

type variant struct {
	name  string
	apply func(m map[string]any) bool
}

func setAt(path string, v any) variant {
	return variant{"set " + path, func(m map[string]any) bool {
		parent, key, ok := lookup(m, path)
		if !ok {
			return false
		}
		parent[key] = v
		return true
	}}
}

func delAt(path string) variant {
	return variant{"delete " + path, func(m map[string]any) bool {
		parent, key, ok := lookup(m, path)
		if !ok {
			return false
		}
		if _, ok := parent[key]; !ok {
			return false
		}
		delete(parent, key)
		return true
	}}
}

// lookup resolves "a.b.0.c" to the object holding the last key; ok if that object exists.
func lookup(m map[string]any, path string) (map[string]any, string, bool) {
	parts := strings.Split(path, ".")
	var cur any = m
	for _, p := range parts[:len(parts)-1] {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[p]
		case []any:
			if len(c) == 0 {
				return nil, "", false
			}
			cur = c[0]
		default:
			return nil, "", false
		}
	}
	o, ok := cur.(map[string]any)
	return o, parts[len(parts)-1], ok
}

func invalidVariants(base string) []variant {
	common := []variant{
		setAt("schema", 2), setAt("schema", "1"), delAt("schema"), setAt("unknown", 1),
		setAt("Schema", 1),
	}
	switch {
	case base == "loadlog":
		return append(common,
			delAt("name"), delAt("time"), delAt("worker"), delAt("step"),
			setAt("name", "mystep"), setAt("phase", "x"), setAt("reservation_id", 0),
			setAt("reservation_id", "7001"), setAt("step", 1001), setAt("step", -1),
			setAt("info", "a\nb"), setAt("info", ""), setAt("info", nil), setAt("worker", "a b"),
			setAt("worker", "$(id)"), setAt("kind", "x"), setAt("time", "yesterday"),
			setAt("time", "2026-11-24 10:00:00Z"), setAt("duration_ms", -1), setAt("request_seq", 1.5),
		)
	case strings.HasPrefix(base, "result"):
		return append(common,
			delAt("outcome"), delAt("worker"), delAt("request_state"), setAt("outcome", "ok"),
			setAt("request_state", "x;y"), setAt("kind", "x"), setAt("ip", "192.0.2.01"),
			setAt("ip", "fe80::1%eth0"), setAt("ip", ""), setAt("error", "a\nb"), setAt("error_code", "a b"),
			setAt("passwords", []any{map[string]any{"user_id": 1, "login": "alice", "password": "x"}}),
			setAt("passwords", []any{map[string]any{"user_id": 1, "login": "alice", "sealed": "abc"}}),
			setAt("passwords", []any{map[string]any{"user_id": 1, "login": "Alice", "sealed": "AAAA"}}),
			setAt("new_image", map[string]any{"image_id": 1, "name": "a..b", "revision_id": 1, "revision": 1}),
			setAt("deliveries", -1), setAt("image_size_mb", -1), setAt("request_seq", nil),
		)
	}
	v := append(common,
		setAt("kind", "other"), setAt("request.unknown", 1), setAt("vmhost.profile.password", "x"),
		delAt("request.id"), delAt("request.start"), delAt("reservation.id"), delAt("computer.hostname"),
		delAt("computer.cpus"), delAt("vmhost.profile"), delAt("vmhost.profile.vmdisk"), delAt("image.revision"),
		delAt("image.os_type"), delAt("users.0.login"), delAt("next_image.revision"),
		setAt("request.id", "5001"), setAt("request.id", 0), setAt("request.id", 9007199254740992),
		setAt("request.state", "bogus"), setAt("request.state", "inuse"), setAt("request.laststate", ""), setAt("request.start", "now"),
		setAt("request.modified", nil),
		setAt("computer.hostname", "vm 031"), setAt("computer.hostname", "vm;031"), setAt("computer.hostname", "vm..a"),
		setAt("computer.hostname", "v\u0430.example.edu"), setAt("computer.short_name", "vm_031"),
		setAt("computer.private_ip", "192.0.2.031"), setAt("computer.private_ip", "fe80::1%eth0"),
		setAt("computer.private_ip", "2001:DB8::1"), setAt("computer.public_ip", ""), setAt("computer.eth0_mac", "00-50-56-00-00-1f"),
		setAt("computer.ram_mb", 0), setAt("computer.cpus", 769), setAt("computer.cpus", 2.5),
		setAt("vmhost.hostname", "$(id)"), setAt("vmhost.profile.datastore_path", "/vmfs/../etc"),
		setAt("vmhost.profile.datastore_path", "[ds] a/../b"), setAt("vmhost.profile.datastore_path", "relative/path"), setAt("vmhost.profile.datastore_path", "datastore1;id"),
		setAt("vmhost.profile.virtual_switch0", "a;b"), setAt("vmhost.profile.vmdisk", "x"),
		setAt("image.name", "a..b"), setAt("image.name", "a/b"), setAt("image.name", "-x"), setAt("image.os_type", "bsd"),
		setAt("image.os_name", "x`id`"), setAt("image.revision", -1),
		setAt("users", map[string]any{}), setAt("users.0.login", "al ice"), setAt("users.0.login", "Alice"),
		setAt("users.0.uid", 999), setAt("users.0.uid", "20001"), setAt("users.0.root_access", "yes"),
		setAt("users.0.ssh_keys", []any{`command="id" ssh-ed25519 AAAA`}),
		setAt("users.0.ssh_keys", []any{keyEd25519 + "\n" + keyRSA}),
		setAt("users.0.ssh_keys", []any{"ssh-ed25519 AAAA alice laptop"}),
		setAt("remote_ip", "198.51.100.1/24"), setAt("management_node_ip", "x"),
	)
	switch base {
	case "reserved":
		v = append(v, delAt("remote_ip"), delAt("users"), setAt("users", []any{}))
	case "image":
		v = append(v, delAt("target_image"), delAt("target_image.revision"), setAt("target_image.name", "a b"),
			setAt("target_image.extra", 1))
	default:
		v = append(v, setAt("target_image", map[string]any{"image_id": 1, "name": "x", "revision_id": 2, "revision": 1}))
	}
	return v
}

// TestSchemaKindStates: each kind's schema accepts exactly the states in KindStates.
func TestSchemaKindStates(t *testing.T) {
	for _, k := range messages.Kinds {
		s := compileSchema(t, "request-"+string(k))
		for state := range messages.StateIDs {
			m := exampleMap(t, string(k))
			obj(m, "request")["state"] = state
			data := marshal(t, m)
			_, goErr := messages.DecodeRequest(data)
			schemaErr := schemaValid(t, s, data)
			if (goErr == nil) != (schemaErr == nil) {
				t.Errorf("kind %s state %s: decoder %v, schema %v", k, state, goErr, schemaErr)
			}
		}
	}
}
