package messages_test

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/vclq/vclq/messages"
)

// go test -run '^$' -bench Decode -benchmem ./messages
//
// DecodeRequestReject measures rejections: a case-variant key (shape) and a reserved
// login (validation).

func BenchmarkDecodeRequest(b *testing.B) {
	for _, name := range []string{"new", "reserved", "image"} {
		data := readExample(b, name)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := messages.DecodeRequest(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecodeRequestReject(b *testing.B) {
	data := readExample(b, "new")
	for _, c := range []struct{ name, from, to string }{
		{"unknown-key", `"kind"`, `"Kind"`},
		{"bad-value", `"alice"`, `"root"`},
	} {
		bad := []byte(strings.Replace(string(data), c.from, c.to, 1))
		if bytes.Equal(bad, data) {
			b.Fatalf("mutation %s did not apply", c.name)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := messages.DecodeRequest(bad); err == nil {
					b.Fatal("accepted")
				}
			}
		})
	}
}

func BenchmarkDecodeLoadlog(b *testing.B) {
	data := readExample(b, "loadlog")
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := messages.DecodeLoadlog(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeResult(b *testing.B) {
	for _, name := range []string{"result", "result_failed"} {
		data := readExample(b, name)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := messages.DecodeResult(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecodeRequestHostile: nesting under an unknown key as deep as encoding/json
// allows (10000 levels in all) and deeper (a syntax error), within MaxMessageSize.
func BenchmarkDecodeRequestHostile(b *testing.B) {
	for _, n := range []int{10000 - 3, 30000} {
		data := []byte(`{"schema":1,"users":[{"id":1,"x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}]}`)
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := messages.DecodeRequest(data); err == nil {
					b.Fatal("accepted")
				}
			}
		})
	}
}
