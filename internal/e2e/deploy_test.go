package e2e_test

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestDeployManifestsAreAccepted has the real apiserver validate deploy/
// (server-side dry run): the Deployment, Services and ConfigMap a real
// cluster gets must be accepted as they are, next to the RBAC and CRDs
// the other tests apply for real.
func TestDeployManifestsAreAccepted(t *testing.T) {
	in := install(t)
	out := run(t, in.adminEnv(), in.kubectl, "apply", "--dry-run=server",
		"-f", filepath.Join(in.root, "deploy", "server"))
	for _, want := range []string{
		"deployment.apps/edgesync-server", "service/edgesync-server", "configmap/edgesync-server",
		"poddisruptionbudget.policy/edgesync-server",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run did not accept %s:\n%s", want, out)
		}
	}
}
