// Package repo locates the repository checkout for tests that run its
// binaries (bin/, built by the Makefile), scripts and manifests, and names
// the goroutines client-go leaves running on purpose, for leak checks.
package repo

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

// RequireEnv is set to 1 by `make test`: a missing prerequisite (binary,
// cluster, generated client) is then a failure instead of a skip.
const RequireEnv = "EDGESYNC_REQUIRE_DEVCLUSTER"

// Root returns the directory holding the main module's go.mod.
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "buf.gen.yaml")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("cannot find the repository root (buf.gen.yaml) above the test's directory")
		}
		dir = parent
	}
}

// Missing skips the test with a note saying how to get what is missing, or
// fails it under `make test`, which provides everything.
func Missing(t testing.TB, what, howToGetIt string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s is missing although %s=1: %s", what, RequireEnv, howToGetIt)
	}
	t.Skipf("%s is missing: %s", what, howToGetIt)
}

// Binary returns the path of bin/NAME, which the Makefile builds or
// installs (`make build tools devcluster`).
func Binary(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(Root(t), "bin", name)
	if _, err := os.Stat(path); err != nil {
		Missing(t, path, "run `make build tools devcluster`, or `make test`")
	}
	return path
}

// ClientGoLeakOptions ignores the goroutines client-go keeps on purpose:
// idle keep-alive connections of its cached transports and klog's flush
// daemon. Pass them to goleak.VerifyTestMain in packages that use client-go.
func ClientGoLeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
		goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
		goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*clientConnReadLoop).run"),
	}
}
