package messages

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// Differential tests: decodeStrict (single-pass shape walk) must give exactly the
// verdict, the error (text and wrapped sentinels) and the decoded value of
// refDecodeStrict (the Token-based check it replaced, in shape_ref_test.go), for
// requests, loadlogs and results alike.

func diffOne[T any](t *testing.T, data []byte, shape *shapeNode) {
	t.Helper()
	var got, want T
	errGot := decodeStrict(data, &got, shape)
	errWant := refDecodeStrict(data, &want)
	if (errGot == nil) != (errWant == nil) {
		t.Fatalf("%T: verdicts differ on %.300q:\n new: %v\n ref: %v", got, data, errGot, errWant)
	}
	if errWant != nil {
		for _, sentinel := range []error{ErrInvalid, ErrSchema, ErrTooLarge} {
			if errors.Is(errGot, sentinel) != errors.Is(errWant, sentinel) {
				t.Fatalf("%T: errors.Is(%v) differs on %.300q:\n new: %v\n ref: %v", got, sentinel, data, errGot, errWant)
			}
		}
		if errGot.Error() != errWant.Error() {
			t.Fatalf("%T: error texts differ on %.300q:\n new: %v\n ref: %v", got, data, errGot, errWant)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%T: decoded values differ on %.300q:\n new: %+v\n ref: %+v", got, data, got, want)
	}
}

func diffDecode(t *testing.T, data []byte) {
	t.Helper()
	diffOne[Request](t, data, requestShape)
	diffOne[Loadlog](t, data, loadlogShape)
	diffOne[Result](t, data, resultShape)
}

// diffSeeds are the examples, their compact forms, the checked-in fuzz corpora and
// hand-made edge cases of the envelope and the shape.
func diffSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	files, _ := filepath.Glob("testdata/*.json")
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, data)
		var compact bytes.Buffer
		_ = json.Compact(&compact, data)
		seeds = append(seeds, compact.Bytes())
		var indented bytes.Buffer
		_ = json.Indent(&indented, data, "\r\n", "\t")
		seeds = append(seeds, indented.Bytes())
	}
	corpus, _ := filepath.Glob("testdata/fuzz/*/*")
	if dirs := os.Getenv("MESSAGES_DIFF_CORPUS"); dirs != "" { // e.g. the fuzz cache
		for _, d := range filepath.SplitList(dirs) {
			more, _ := filepath.Glob(filepath.Join(d, "*"))
			corpus = append(corpus, more...)
		}
	}
	for _, name := range corpus {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			for _, prefix := range []string{"[]byte(", "string("} {
				if lit, ok := strings.CutPrefix(line, prefix); ok {
					if s, err := strconv.Unquote(strings.TrimSuffix(lit, ")")); err == nil {
						seeds = append(seeds, []byte(s))
					}
				}
			}
		}
	}
	deep := func(open, close string, n int) []byte {
		return []byte(`{"schema":1,"x":` + strings.Repeat(open, n) + strings.Repeat(close, n) + `}`)
	}
	for _, s := range []string{
		"", " ", "\v", "\u00a0", "\ufeff{}", "null", "[1]", `"x"`, "1", "true", "{}", "{", "}",
		`{"schema":1}`, `{"schema":1} `, `{"schema":1}x`, `{"schema":1}{}`, `{"schema":1},`,
		`{"schema":2}`, `{"schema":"1"}`, `{"schema":1.0}`, `{"schema":1e0}`, `{"schema":-0}`,
		`{"schema":null}`, `{"schema":01}`, `{"schema":[1]}`, `{"schema":{}}`, `{"schema":true}`,
		`{"schema":2,"schema":1}`, `{"schema":1,"schema":2}`, `{"Schema":1}`, `{"sch\u0065ma":1}`,
		`{"schema":1,"kind":"new","Kind":"new"}`, `{"Kind":"new","schema":2}`, `{"x":1,"schema":2}`,
		`{"schema":1,"x":null}`, `{"schema":1,"request":null}`, `{"schema":1,"request":{"id":null}}`,
		`{"schema":1,"request":{"id":1,"id":2}}`, `{"schema":1,"request":{"i\u0064":1,"id":2}}`,
		`{"schema":1,"request":{"id":1.5}}`, `{"schema":1,"request":{"id":-1E3}}`,
		`{"schema":1,"request":{"id":"1"}}`, `{"schema":1,"request":{"id":[]}}`,
		`{"schema":1,"request":{"id":{}}}`, `{"schema":1,"request":{"id":true}}`,
		`{"schema":1,"request":{"id":99999999999999999999999}}`, `{"schema":1,"request_seq":-1}`,
		`{"schema":1,"request":{"start":"2026-11-24T10:00:00Z"}}`,
		`{"schema":1,"request":{"start":"2026-11-24T10:00:00\u005a"}}`,
		`{"schema":1,"request":{"start":"2026-13-24T10:00:00Z"}}`,
		`{"schema":1,"request":{"start":"2026-11-24T10:00:00Z\u0000"}}`,
		`{"schema":1,"request":{"start":"2026-11-24T10:00:00\xffZ"}}`,
		`{"schema":1,"request":{"start":1}}`, `{"schema":1,"request":{"laststate":""}}`,
		`{"schema":1,"request":{"laststate":"\u0000"}}`, `{"schema":1,"request":{"state":""}}`,
		`{"schema":1,"users":[]}`, `{"schema":1,"users":[null]}`, `{"schema":1,"users":[[]]}`,
		`{"schema":1,"users":[{}]}`, `{"schema":1,"users":[{"ssh_keys":[1]}]}`,
		`{"schema":1,"users":[{"ssh_keys":["a",null]}]}`, `{"schema":1,"users":{}}`,
		`{"schema":1,"users":[{"root_access":1}]}`, `{"schema":1,"users":[{"root_access":true}]}`,
		`{"schema":1,"target_image":{"image_id":1,"name":"x","revision_id":1,"revision":1}}`,
		`{"schema":1,"next_image":{}}`, `{"schema":1,"kind":"new","\xff":1}`,
		`{"schema":1,"kind":"new","\ud800":1}`, `{"schema":1,"ki\"nd":1}`, `{"schema":1,"k\\ind":1}`,
		`{"schema":1,"x":"a\"b\\","y":"}]"}`, `{ "schema" : 1 , "kind" : "new" }`,
		"{\t\"schema\"\r\n:\n1}", `{"schema":1,"passwords":[{"user_id":1,"login":"a","sealed":"AAAA"}]}`,
		`{"schema":1,"new_image":null}`, `{"schema":1,"deliveries":1,"step":2}`,
	} {
		seeds = append(seeds, []byte(s))
	}
	seeds = append(seeds,
		deep("[", "]", 10000), deep("[", "]", 10001), deep(`{"a":`, "}", 10000), deep(`{"a":`, "}", 10001),
		deep("[", "]", 30000),
		[]byte(`{"schema":1,"users":`+strings.Repeat("[", 10001)+strings.Repeat("]", 10001)+`}`),
		[]byte(`{"schema":1,"users":[`+strings.Repeat("[", 5000)+strings.Repeat("]", 5000)+`]}`),
		append([]byte(`{"schema":1,"x":"`), append(bytes.Repeat([]byte("x"), MaxMessageSize), `"}`...)...),
	)
	return seeds
}

// mutate changes data a little, in ways that tend to keep it JSON: swaps a token for
// another, duplicates or drops a member, changes a key's case, inserts a null.
func mutate(r *rand.Rand, data []byte) []byte {
	out := append([]byte(nil), data...)
	if len(out) == 0 {
		return []byte("{}")
	}
	pick := func() int { return r.IntN(len(out)) }
	snippets := []string{`null`, `""`, `"x"`, `0`, `1`, `-1`, `1.5`, `1e3`, `true`, `[]`, `{}`, `[null]`, `{"id":1}`,
		`"2026-11-24T10:00:00Z"`, `"\u0041"`, `,`, `:`, `"schema":1,`, `"kind":"new",`, ` `, `\`, `"`}
	for n := 1 + r.IntN(3); n > 0; n-- {
		switch r.IntN(14) {
		case 0: // flip a byte
			out[pick()] ^= byte(1 << r.IntN(8))
		case 1: // delete a span
			i := pick()
			j := min(len(out), i+1+r.IntN(16))
			out = append(out[:i], out[j:]...)
		case 2: // insert a snippet
			i := pick()
			s := snippets[r.IntN(len(snippets))]
			out = append(out[:i], append([]byte(s), out[i:]...)...)
		case 3, 8, 9: // change the case of a letter
			i := pick()
			if c := out[i]; c >= 'a' && c <= 'z' {
				out[i] = c - 'a' + 'A'
			}
		case 4: // duplicate a span elsewhere
			i := pick()
			j := min(len(out), i+1+r.IntN(40))
			k := pick()
			span := append([]byte(nil), out[i:j]...)
			out = append(out[:k], append(span, out[k:]...)...)
		case 5, 6, 10, 11, 12: // replace the value after a random colon with a snippet
			colons := []int{}
			for i, c := range out {
				if c == ':' {
					colons = append(colons, i)
				}
			}
			if len(colons) == 0 {
				break
			}
			i := colons[r.IntN(len(colons))] + 1
			end := i
			for end < len(out) && out[end] != ',' && out[end] != '}' {
				end++
			}
			s := snippets[r.IntN(13)]
			out = append(out[:i], append([]byte(s), out[end:]...)...)
		case 7, 13: // drop a member after a comma
			commas := []int{}
			for i, c := range out {
				if c == ',' {
					commas = append(commas, i)
				}
			}
			if len(commas) == 0 {
				break
			}
			i := commas[r.IntN(len(commas))]
			end := i + 1
			for end < len(out) && out[end] != ',' && out[end] != '}' {
				end++
			}
			out = append(out[:i], out[end:]...)
		}
		if len(out) == 0 {
			return out
		}
	}
	return out
}

func TestShapeDifferential(t *testing.T) {
	seeds := diffSeeds(t)
	for _, s := range seeds {
		diffDecode(t, s)
	}
	n := 200
	if testing.Short() {
		n = 20
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, s := range seeds {
		if len(s) > 8<<10 {
			continue
		}
		for range n {
			m := mutate(r, s)
			diffDecode(t, m)
			diffDecode(t, mutate(r, m))
		}
	}
}

// FuzzShapeDifferential: go test ./messages -run '^$' -fuzz FuzzShapeDifferential
func FuzzShapeDifferential(f *testing.F) {
	for _, s := range diffSeeds(f) {
		if len(s) <= MaxMessageSize+100 {
			f.Add(s)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		diffDecode(t, data)
	})
}
