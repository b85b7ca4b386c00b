//go:build unix

package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// fileTerminalWidth is the width of the terminal f is, and whether it is one (a
// character device such as /dev/null is not).
func fileTerminalWidth(f *os.File) (int, bool) {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0, false
	}
	return int(ws.Col), true
}
