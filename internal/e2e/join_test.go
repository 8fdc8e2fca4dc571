package e2e_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// TestJoinWithToken is an operator adding an edge node with the real
// binaries: token create prints the join command, a wrong CA hash is
// refused before the token is spent, join writes the node's files, run
// brings the Node to Ready, and the single-use token joins no other node.
func TestJoinWithToken(t *testing.T) {
	in := install(t)
	client := testcluster.Client(t)
	serverBin, agentBin := repo.Binary(t, "edgesync-server"), repo.Binary(t, "edgesync-agent")
	node := testcluster.UniqueName("edge-join")
	dir := filepath.Join(t.TempDir(), "edgesync")

	out := run(t, in.adminEnv(), serverBin, "token", "create", "--node", node, "--ttl", "10m", "--single-use",
		"--ca", filepath.Join(in.pki, "ca.crt"), "--server", in.addr, "--dir", dir)
	token := field(t, out, `token:\s+([a-z0-9]{6}\.[a-z0-9]{16})`)
	hash := field(t, out, `ca-cert-hash:\s+(sha256:[0-9a-f]{64})`)
	join := strings.ReplaceAll(out[strings.Index(out, "edgesync-agent join"):], "\\\n", "")
	want := fmt.Sprintf("edgesync-agent join --server %s --token %s --ca-cert-hash %s --node %s --dir %s", in.addr, token, hash, node, dir)
	if strings.Join(strings.Fields(join), " ") != want {
		t.Fatalf("token create printed the join command\n%s\nwant\n%s", join, want)
	}
	t.Cleanup(func() { _, _ = tryRun(serverBin, "token", "delete", token[:6], "--kubeconfig", in.kubeconfig) })

	// A server whose CA does not match the pin: refused, token unspent.
	wrong := "sha256:" + strings.Repeat("0", 64)
	msg := fail(t, agentBin, "join", "--server", in.addr, "--token", token, "--ca-cert-hash", wrong, "--node", node, "--dir", dir)
	if !strings.Contains(msg, "does not match") || strings.Contains(msg, token[7:]) {
		t.Fatalf("join with a wrong CA hash said %q, want a mismatch without the token's secret", msg)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("a refused join created %s (%v)", dir, err)
	}
	if list := run(t, in.adminEnv(), serverBin, "token", "list"); !regexp.MustCompile(token[:6] + `.*` + node + `\s+true\s+-\s+true`).MatchString(list) {
		t.Fatalf("token list after a refused join:\n%s\nwant %s bound to %s, single use, unused", list, token[:6], node)
	}

	// The command as printed.
	run(t, nil, agentBin, strings.Fields(want)[1:]...)
	for _, f := range []string{"ca.crt", "node.crt", "node.key"} {
		info, err := os.Stat(filepath.Join(dir, f))
		if err != nil || info.Mode().Perm() != 0o600 {
			t.Fatalf("%s after join: %v, mode %v; want 0600", f, err, info.Mode().Perm())
		}
	}
	agent := start(t, "edgesync-agent-"+node, nil, agentBin, "run",
		"--server", in.addr, "--node", node, "--dir", dir, "--store", filepath.Join(t.TempDir(), "store"))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.CoreV1().Nodes().Delete(ctx, node, metav1.DeleteOptions{})
	})
	eventually(t, time.Minute, "node "+node+" to be Ready", func() error {
		return nodeReady(t.Context(), client, node, corev1.ConditionTrue)
	}, agent, in.server)

	// Single use: the token is spent, and says on whom.
	if list := run(t, in.adminEnv(), serverBin, "token", "list"); !regexp.MustCompile(token[:6] + `.*\s` + node + `\s+true\s+` + node).MatchString(list) {
		t.Fatalf("token list after the join:\n%s\nwant %s used by %s", list, token[:6], node)
	}
	msg = fail(t, agentBin, "join", "--server", in.addr, "--token", token, "--ca-cert-hash", hash, "--node", node, "--dir", t.TempDir())
	if !strings.Contains(msg, "Unauthenticated") || !strings.Contains(msg, "already joined") {
		t.Fatalf("second join with a single-use token said %q, want Unauthenticated: already joined", msg)
	}
	run(t, in.adminEnv(), serverBin, "token", "delete", token[:6])
	if list := run(t, in.adminEnv(), serverBin, "token", "list"); strings.Contains(list, token[:6]) {
		t.Fatalf("token list after delete still shows %s:\n%s", token[:6], list)
	}
}

// field returns the first group of pattern in out.
func field(t *testing.T, out, pattern string) string {
	t.Helper()
	m := regexp.MustCompile(pattern).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("output has no %s:\n%s", pattern, out)
	}
	return m[1]
}

// fail runs a command that must fail and returns what it printed.
func fail(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err == nil {
		t.Fatalf("%s %s succeeded:\n%s", filepath.Base(name), strings.Join(args, " "), out)
	}
	return string(out)
}
