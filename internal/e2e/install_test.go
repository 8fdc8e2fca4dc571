package e2e_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// installation is a running edgesync-server with its own PKI, talking to the
// devcluster as the edgesync-server ServiceAccount bound by deploy/rbac.
type installation struct {
	root       string
	kubectl    string
	kubeconfig string // admin, for the test's own kubectl calls
	pki        string
	addr       string
	server     *process
	// serverKubeconfig authenticates as the server's ServiceAccount.
	serverKubeconfig string
}

func (in *installation) adminEnv() []string { return []string{"KUBECONFIG=" + in.kubeconfig} }

// grpcurl runs bin/grpcurl against the server with the admin certificate.
func (in *installation) grpcurl(t testing.TB, args ...string) string {
	t.Helper()
	base := []string{
		"-cacert", filepath.Join(in.pki, "ca.crt"),
		"-cert", filepath.Join(in.pki, "admin-e2e.crt"),
		"-key", filepath.Join(in.pki, "admin-e2e.key"),
		in.addr,
	}
	// grpcurl takes its flags before the address and the call after it.
	flags, call := args, []string(nil)
	for i, a := range args {
		if !strings.HasPrefix(a, "-") && (i == 0 || !strings.HasPrefix(args[i-1], "-d")) {
			flags, call = args[:i], args[i:]
			break
		}
	}
	full := append(append(append([]string{}, flags...), base...), call...)
	return run(t, nil, repo.Binary(t, "grpcurl"), full...)
}

// nodeCert makes a client certificate for node and returns its files.
func (in *installation) nodeCert(t testing.TB, node string) (certFile, keyFile string) {
	t.Helper()
	run(t, nil, repo.Binary(t, "edgesync-server"), "certs", "node", node, "--dir", in.pki)
	return filepath.Join(in.pki, "node-"+node+".crt"), filepath.Join(in.pki, "node-"+node+".key")
}

// install starts edgesync-server; serverArgs are added to its flags.
func install(t *testing.T, serverArgs ...string) *installation {
	t.Helper()
	testcluster.RESTConfig(t) // skips or fails when there is no devcluster
	in := &installation{
		root:       repo.Root(t),
		kubectl:    repo.Binary(t, "kubectl"),
		kubeconfig: os.Getenv(testcluster.KubeconfigEnv),
		pki:        filepath.Join(t.TempDir(), "pki"),
	}
	serverBin := repo.Binary(t, "edgesync-server")
	repo.Binary(t, "grpcurl")

	run(t, in.adminEnv(), in.kubectl, "apply",
		"-f", filepath.Join(in.root, "deploy", "namespace.yaml"),
		"-f", filepath.Join(in.root, "deploy", "rbac"),
		"-f", filepath.Join(in.root, "deploy", "flowcontrol"))
	token := strings.TrimSpace(run(t, in.adminEnv(), in.kubectl,
		"-n", "edgesync-system", "create", "token", "edgesync-server", "--duration=1h"))
	serverKubeconfig := writeTokenKubeconfig(t, in.kubeconfig, token)
	in.serverKubeconfig = serverKubeconfig

	run(t, nil, serverBin, "certs", "init", "--dir", in.pki, "--hosts", "localhost,127.0.0.1")
	run(t, nil, serverBin, "certs", "admin", "e2e", "--dir", in.pki)

	in.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	in.server = start(t, "edgesync-server", nil, serverBin, append([]string{
		"--listen", in.addr,
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--tls-ca", filepath.Join(in.pki, "ca.crt"),
		"--tls-cert", filepath.Join(in.pki, "server.crt"),
		"--tls-key", filepath.Join(in.pki, "server.key"),
		"--bootstrap-ca-key", filepath.Join(in.pki, "ca.key"), // nodes may join with tokens
		"--kubeconfig", serverKubeconfig,
		"--server-id", "e2e",
		"--log-format", "console"}, serverArgs...)...)
	eventually(t, time.Minute, "the server to report SERVING", func() error {
		out, err := tryRun(repo.Binary(t, "grpcurl"),
			"-cacert", filepath.Join(in.pki, "ca.crt"),
			"-cert", filepath.Join(in.pki, "admin-e2e.crt"),
			"-key", filepath.Join(in.pki, "admin-e2e.key"),
			in.addr, "grpc.health.v1.Health/Check")
		if err == nil && !strings.Contains(out, `"SERVING"`) {
			err = fmt.Errorf("health: %s", out)
		}
		return err
	}, in.server)
	return in
}

// writeTokenKubeconfig writes a kubeconfig for the apiserver of adminPath
// that authenticates with a ServiceAccount token instead of the admin cert.
func writeTokenKubeconfig(t testing.TB, adminPath, token string) string {
	t.Helper()
	admin, err := clientcmd.LoadFromFile(adminPath)
	if err != nil {
		t.Fatal(err)
	}
	cluster := admin.Clusters[admin.Contexts[admin.CurrentContext].Cluster]
	kc := clientcmdapi.NewConfig()
	kc.Clusters["devcluster"] = cluster
	kc.AuthInfos["edgesync-server"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["edgesync-server"] = &clientcmdapi.Context{Cluster: "devcluster", AuthInfo: "edgesync-server"}
	kc.CurrentContext = "edgesync-server"
	path := filepath.Join(t.TempDir(), "server.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}
