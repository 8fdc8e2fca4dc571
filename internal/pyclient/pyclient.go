// Package pyclient holds the tests that prove the generated Python client
// (`make generate-python`) speaks edgesync's protocol: the protos are all a
// client in another language needs. The Python sources live beside them.
package pyclient

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/edgesync/edgesync/internal/repo"
)

// Python is Debian's own interpreter, which has Debian's python3-grpcio and
// python3-protobuf; another python3 found first on the PATH may not.
const Python = "/usr/bin/python3"

// Command returns a command running a Python script of this package with the
// generated client importable. It skips the test when the Python client or
// its runtime is missing, or fails under `make test`
// (EDGESYNC_REQUIRE_DEVCLUSTER=1), which generates and installs them.
func Command(t testing.TB, script string, args ...string) *exec.Cmd {
	t.Helper()
	root := repo.Root(t)
	generated := filepath.Join(root, "gen-python")
	missing := ""
	if _, err := os.Stat(filepath.Join(generated, "edgesync", "v1", "sync_pb2.py")); err != nil {
		missing = "the generated Python client"
	} else if err := exec.Command(Python, "-c", "import grpc, google.protobuf").Run(); err != nil {
		missing = "Debian's python3-grpcio and python3-protobuf"
	}
	if missing != "" {
		repo.Missing(t, missing, "run `make generate-python apt-deps`, or `make test`")
	}
	cmd := exec.Command(Python, append([]string{filepath.Join(root, "internal", "pyclient", script)}, args...)...)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+generated, "PYTHONDONTWRITEBYTECODE=1")
	return cmd
}
