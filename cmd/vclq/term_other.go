//go:build !unix

package main

import "os"

// fileTerminalWidth: terminal control is used on unix systems only.
func fileTerminalWidth(*os.File) (int, bool) { return 0, false }
