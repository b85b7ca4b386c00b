package osconfig

import (
	"fmt"
	"strings"
)

// ShellQuote returns s as one POSIX shell word: wrapped in single quotes, each ' in s
// written as '\” (close, escaped quote, reopen). Inside single quotes the shell interprets nothing ($, `, \, ;,
// newlines are literal), so the word is exactly s. s must not contain NUL (no shell
// argument can); callers only pass validated values anyway.
func ShellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// psQuotes are the characters PowerShell accepts as a single quote: ' and the
// typographic ‘ ’ ‚ ‛. Each must be doubled inside a single-quoted string.
const psQuotes = "'\u2018\u2019\u201a\u201b"

// PSQuote returns s as a PowerShell single-quoted string literal: wrapped in ' and
// every quote character (', ‘, ’, ‚, ‛) doubled. PowerShell expands nothing inside
// ($, `, ", ;, newlines are literal).
func PSQuote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for _, r := range s {
		if strings.ContainsRune(psQuotes, r) {
			b.WriteRune(r)
		}
		b.WriteRune(r)
	}
	b.WriteByte('\'')
	return b.String()
}

// sh builds a shell command line: every argument is ShellQuote'd and substituted for
// a %s in format, a constant. Message data never reaches a shell any other way.
func sh(format string, args ...string) string {
	q := make([]any, len(args))
	for i, a := range args {
		q[i] = ShellQuote(a)
	}
	return fmt.Sprintf(format, q...)
}

// argv is a shell command line of the given words, each quoted.
func argv(words ...string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = ShellQuote(w)
	}
	return strings.Join(q, " ")
}

// ps builds a PowerShell statement: every argument is PSQuote'd and substituted for a
// %s in format, a constant.
func ps(format string, args ...string) string {
	q := make([]any, len(args))
	for i, a := range args {
		q[i] = PSQuote(a)
	}
	return fmt.Sprintf(format, q...)
}
