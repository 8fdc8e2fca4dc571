package version

import (
	"runtime/debug"
	"testing"
)

func TestGet(t *testing.T) {
	built := func(mainVersion string, settings ...debug.BuildSetting) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			return &debug.BuildInfo{Main: debug.Module{Version: mainVersion}, Settings: settings}, true
		}
	}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	rev := debug.BuildSetting{Key: "vcs.revision", Value: "abc123"}
	for _, tc := range []struct {
		name                    string
		stampVersion, stampRev  string
		read                    func() (*debug.BuildInfo, bool)
		wantVersion, wantCommit string
	}{
		{"stamped by the Makefile wins", "v0.1.0", "def456", built("v9.9.9", rev), "v0.1.0", "def456"},
		{"go install module@version", "", "", built("v0.2.0"), "v0.2.0", "unknown"},
		{"go build in a clean checkout", "", "", built("(devel)", rev, debug.BuildSetting{Key: "vcs.modified", Value: "false"}), "(devel)", "abc123"},
		{"go build in a modified checkout", "", "", built("(devel)", rev, debug.BuildSetting{Key: "vcs.modified", Value: "true"}), "(devel)", "abc123-dirty"},
		{"version stamped, commit from the build", "v0.1.0", "", built("(devel)", rev), "v0.1.0", "abc123"},
		{"no build information", "", "", none, "(devel)", "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := get(tc.stampVersion, tc.stampRev, tc.read)
			if got.Version != tc.wantVersion || got.Commit != tc.wantCommit {
				t.Errorf("got version %q commit %q, want %q %q", got.Version, got.Commit, tc.wantVersion, tc.wantCommit)
			}
		})
	}
}
