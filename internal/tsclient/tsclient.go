// Package tsclient holds the TypeScript edge agent (edge_client.ts) built
// only from the client generated from api/ (buf.gen.ts.yaml) with the npm
// packages pinned in package-lock.json, and the helper the end-to-end tests
// run it with: the protos are all a TypeScript edge needs. `make
// generate-ts` installs the packages into node_modules, generates gen/ and
// compiles dist/; none of them is committed.
package tsclient

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/edgesync/edgesync/internal/repo"
)

// Command returns a command running the compiled TypeScript edge agent with
// args. It skips the test when the agent is not built or Node.js is
// missing, or fails under `make test` (EDGESYNC_REQUIRE_DEVCLUSTER=1),
// which builds it.
func Command(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	script := filepath.Join(repo.Root(t), "internal", "tsclient", "dist", "edge_client.js")
	node, err := exec.LookPath("node")
	if err != nil {
		repo.Missing(t, "Node.js (node)", "install Node.js 20 or later")
	}
	if _, err := os.Stat(script); err != nil {
		repo.Missing(t, "the TypeScript edge agent "+script, "run `make generate-ts`, or `make test`")
	}
	return exec.Command(node, append([]string{script}, args...)...)
}
