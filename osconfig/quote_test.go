package osconfig_test

import (
	"os/exec"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vclq/vclq/osconfig"
)

var quoteSeeds = []string{
	"", "plain", "a b", "it's", "''", "'", `\`, `\'`, "$(id)", "`id`", "${HOME}", "a;b", "a&&b", "a|b",
	"a\nb", "a\r\nb", "\t", "*", "?", "[a]", "~root", "!", "#x", `"q"`, "--", "-rf", "%s", "'$(id)'",
	"‘’‚‛", "it’s", "ä", "\x7f",
}

// ShellQuote's word, given to a real /bin/sh, is exactly the input.
func FuzzShellQuote(f *testing.F) {
	for _, s := range quoteSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if strings.ContainsRune(s, 0) {
			t.Skip("no shell argument can hold NUL")
		}
		q := osconfig.ShellQuote(s)
		if !strings.HasPrefix(q, "'") || !strings.HasSuffix(q, "'") {
			t.Fatalf("ShellQuote(%q) = %q is not single-quoted", s, q)
		}
		out, err := exec.Command("/bin/sh", "-c", "printf '%s' "+q).Output()
		if err != nil {
			t.Fatalf("sh: %v", err)
		}
		if string(out) != s {
			t.Fatalf("sh saw %q for %q (quoted %q)", out, s, q)
		}
	})
}

// psUnquote parses one PowerShell single-quoted string literal the way PowerShell's
// tokenizer does: any of ' ‘ ’ ‚ ‛ opens and closes it, and two in a row are one
// literal quote. It reports whether lit was exactly one literal.
func psUnquote(lit string) (string, bool) {
	isQ := func(r rune) bool { return strings.ContainsRune("'\u2018\u2019\u201a\u201b", r) }
	rs := []rune(lit)
	if len(rs) < 2 || !isQ(rs[0]) {
		return "", false
	}
	var b strings.Builder
	for i := 1; i < len(rs); i++ {
		if isQ(rs[i]) {
			if i+1 < len(rs) && isQ(rs[i+1]) {
				b.WriteRune(rs[i+1])
				i++
				continue
			}
			return b.String(), i == len(rs)-1 // the closing quote must be the end
		}
		b.WriteRune(rs[i])
	}
	return "", false // never closed
}

// PSQuote's literal is exactly one PowerShell string whose value is the input.
func FuzzPSQuote(f *testing.F) {
	for _, s := range quoteSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			t.Skip("PowerShell scripts are text")
		}
		q := osconfig.PSQuote(s)
		got, ok := psUnquote(q)
		if !ok || got != s {
			t.Fatalf("PSQuote(%q) = %q parses as %q (one literal: %v)", s, q, got, ok)
		}
	})
}

func TestPSQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{"alice", "'alice'"},
		{"it's", "'it''s'"},
		{"$(Remove-Item C:\\)", "'$(Remove-Item C:\\)'"},
		{"`n", "'`n'"},
		{"it’s", "'it’’s'"},
		{"a'; Stop-Computer; '", "'a''; Stop-Computer; '''"},
	}
	for _, tc := range tests {
		if got := osconfig.PSQuote(tc.in); got != tc.want {
			t.Errorf("PSQuote(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestShellQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{"alice", "'alice'"},
		{"it's", `'it'\''s'`},
		{"$(reboot)", "'$(reboot)'"},
	}
	for _, tc := range tests {
		if got := osconfig.ShellQuote(tc.in); got != tc.want {
			t.Errorf("ShellQuote(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
