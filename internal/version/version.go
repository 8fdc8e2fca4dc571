// Package version owns what a binary says it is: the release version and
// the commit it was built from. The Makefile stamps both with ldflags
//
//	-X github.com/edgesync/edgesync/internal/version.version=v0.1.0
//	-X github.com/edgesync/edgesync/internal/version.commit=<git sha>
//
// and a binary built without them (go build, go install) falls back to the
// build information the Go toolchain embeds: the module version and the VCS
// revision.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set by the linker (see the package comment); empty when not stamped.
var (
	version string
	commit  string
)

// Info is what a binary reports about itself.
type Info struct {
	Version string // release version, e.g. v0.1.0; "(devel)" when unknown
	Commit  string // full commit hash, "-dirty" appended for a modified tree; "unknown" when unknown
}

// Get returns the stamped version and commit, or what the Go toolchain
// recorded when they were not stamped.
func Get() Info {
	return get(version, commit, debug.ReadBuildInfo)
}

func get(stampedVersion, stampedCommit string, read func() (*debug.BuildInfo, bool)) Info {
	info := Info{Version: stampedVersion, Commit: stampedCommit}
	if info.Version != "" && info.Commit != "" {
		return info
	}
	bi, ok := read()
	if info.Version == "" && ok && bi.Main.Version != "" {
		info.Version = bi.Main.Version
	}
	if info.Commit == "" && ok {
		var revision, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if revision != "" && modified == "true" {
			revision += "-dirty"
		}
		info.Commit = revision
	}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

// String is the line `--version` prints after the program's name:
// "v0.1.0 (commit 4545044…, go1.26.8 linux/arm64)".
func (i Info) String() string {
	return fmt.Sprintf("%s (commit %s, %s %s/%s)", i.Version, i.Commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
