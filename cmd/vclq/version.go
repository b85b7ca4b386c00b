package main

import (
	"context"
	"fmt"
	"runtime/debug"
)

// version, when set with -ldflags "-X main.version=...", replaces the module version
// of the build information.
var version string

// buildInfo is what the binary says about its build: module version, VCS revision
// and whether the work tree had local changes.
type buildInfo struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Revision string `json:"revision,omitempty"`
	Time     string `json:"time,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	Go       string `json:"go"`
}

func readBuildInfo() buildInfo {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		info = nil
	}
	return fromBuildInfo(info)
}

// fromBuildInfo reads the build information (nil: none) and the -X override.
func fromBuildInfo(info *debug.BuildInfo) buildInfo {
	bi := buildInfo{Module: "github.com/vclq/vclq", Version: "(unknown)"}
	if info != nil {
		bi.Module, bi.Version, bi.Go = info.Main.Path, info.Main.Version, info.GoVersion
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				bi.Revision = s.Value
			case "vcs.time":
				bi.Time = s.Value
			case "vcs.modified":
				bi.Modified = s.Value == "true"
			}
		}
	}
	if version != "" {
		bi.Version = version
	}
	return bi
}

// buildVersion is the short version workers register: the module version, then the
// first 12 digits of the revision (+dirty for a modified work tree).
func buildVersion() string {
	bi := readBuildInfo()
	v := bi.Version
	if r := bi.Revision; r != "" {
		v += "+" + r[:min(12, len(r))]
		if bi.Modified {
			v += "-dirty"
		}
	}
	return v
}

// vclq version [--json]: module version and VCS revision of this binary.
func runVersion(_ context.Context, e *env, args []string) int {
	var asJSON bool
	fs := flagSet(e, "version", "[--json]")
	fs.BoolVar(&asJSON, "json", false, "print the build information as JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return exitUsage
	}
	bi := readBuildInfo()
	if asJSON {
		printJSON(e.stdout, bi)
		return exitOK
	}
	rev := bi.Revision
	if rev == "" {
		rev = "unknown (no vcs.revision in the build: -buildvcs=false, or not built inside a git checkout)"
	}
	if bi.Modified {
		rev += " (modified)"
	}
	fmt.Fprintf(e.stdout, "vclq %s\nmodule:   %s\nrevision: %s\n", bi.Version, bi.Module, rev)
	if bi.Time != "" {
		fmt.Fprintf(e.stdout, "commit:   %s\n", bi.Time)
	}
	fmt.Fprintf(e.stdout, "go:       %s\n", bi.Go)
	return exitOK
}
