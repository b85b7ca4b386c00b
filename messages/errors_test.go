package messages_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/vclq/vclq/messages"
)

// Several problems read as one message: the "invalid message" prefix once, then the
// problems separated by "; ", on one line (it goes into logs, results and the
// dead-letter reason header); each problem still wraps ErrInvalid.
func TestJoinedValidationErrorsReadCleanly(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(r *messages.Request)
		want   []string
		nWants int
	}{
		{"two problems", func(r *messages.Request) {
			r.Computer.ShortName = "x" + strings.Repeat("a", 70)
			r.Computer.Hostname = "bad host"
		}, []string{"computer.short_name", "computer.hostname"}, 2},
		{"one problem", func(r *messages.Request) { r.Computer.Hostname = "bad host" }, []string{"computer.hostname"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := messages.DecodeRequest(readExample(t, "new"))
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(r)
			err = r.Validate()
			if err == nil {
				t.Fatal("invalid request accepted")
			}
			msg := err.Error()
			t.Logf("%s", msg)
			if n := strings.Count(msg, "invalid message"); n != 1 {
				t.Errorf("prefix %d times in %q", n, msg)
			}
			if !strings.HasPrefix(msg, "invalid message: ") || strings.Contains(msg, "\n") {
				t.Errorf("not one line with one prefix: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("%q lacks %q", msg, w)
				}
			}
			if got := strings.Count(msg, "; ") + 1; got < tc.nWants {
				t.Errorf("%d problems separated by \"; \", want %d: %q", got, tc.nWants, msg)
			}
			if !errors.Is(err, messages.ErrInvalid) {
				t.Error("does not wrap ErrInvalid")
			}
		})
	}
}
