package e2e_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/edgeclient/agent"
	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// startReplica starts a second edgesync-server beside in's, with the same
// certificates and ServiceAccount, and returns its gRPC address.
func (in *installation) startReplica(t *testing.T, id string) (string, *process) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := start(t, "edgesync-server-"+id, nil, repo.Binary(t, "edgesync-server"),
		"--listen", addr,
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--tls-ca", filepath.Join(in.pki, "ca.crt"),
		"--tls-cert", filepath.Join(in.pki, "server.crt"),
		"--tls-key", filepath.Join(in.pki, "server.key"),
		"--bootstrap-ca-key", filepath.Join(in.pki, "ca.key"),
		"--kubeconfig", in.serverKubeconfig,
		"--server-id", id,
		"--kubelet-listen", "127.0.0.1:0", "--kubelet-client-ca", os.Getenv(kubeletClientCAEnv),
		"--log-format", "console")
	eventually(t, time.Minute, "replica "+id+" to report SERVING", func() error {
		out, err := in.tryGrpcurlAt(t, addr, "grpc.health.v1.Health/Check")
		if err == nil && !strings.Contains(out, `"SERVING"`) {
			err = fmt.Errorf("health: %s", out)
		}
		return err
	}, p)
	return addr, p
}

// tryGrpcurlAt calls addr with the admin certificate and returns what
// grpcurl printed, error or not.
func (in *installation) tryGrpcurlAt(t testing.TB, addr string, args ...string) (string, error) {
	return in.tryGrpcurlAs(t, "admin-e2e", addr, args...)
}

// tryGrpcurlAs calls addr with the certificate pki/<cert>.crt.
func (in *installation) tryGrpcurlAs(t testing.TB, cert, addr string, args ...string) (string, error) {
	full := []string{
		"-cacert", filepath.Join(in.pki, "ca.crt"),
		"-cert", filepath.Join(in.pki, cert+".crt"),
		"-key", filepath.Join(in.pki, cert+".key"),
	}
	full = append(full, args[:len(args)-1]...)
	full = append(full, addr, args[len(args)-1])
	return tryRun(repo.Binary(t, "grpcurl"), full...)
}

// callsAs makes one call of each service a node uses at addr with the
// node certificate certFile: the Sync and Tunnel streams (their first
// receive) and RenewCertificate, and returns each call's error by name.
func callsAs(t *testing.T, addr, caFile, certFile, keyFile string) map[string]error {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errs := map[string]error{}
	if sync, err := edgesyncv1.NewSyncServiceClient(cc).Sync(ctx); err != nil {
		errs["Sync"] = err
	} else {
		_, errs["Sync"] = sync.Recv()
	}
	if tun, err := edgesyncv1.NewTunnelServiceClient(cc).Tunnel(ctx); err != nil {
		errs["Tunnel"] = err
	} else {
		_, errs["Tunnel"] = tun.Recv()
	}
	_, errs["RenewCertificate"] = edgesyncv1.NewBootstrapServiceClient(cc).RenewCertificate(ctx, &edgesyncv1.RenewCertificateRequest{})
	return errs
}

// TestRevokedNodeIsRefusedEverywhere is an operator revoking a stolen edge
// machine: the node joined with a token and runs; RevokeNode on another
// replica ends its session, and its certificate is then refused
// PERMISSION_DENIED by Sync, Tunnel and RenewCertificate on both replicas;
// the token it joined with no longer joins it; `node revoke` deletes the
// tokens bound to it; a new token joins it again.
func TestRevokedNodeIsRefusedEverywhere(t *testing.T) {
	in := installWithKubelet(t) // the Tunnel service too
	client := testcluster.Client(t)
	serverBin, agentBin := repo.Binary(t, "edgesync-server"), repo.Binary(t, "edgesync-agent")
	node := testcluster.UniqueName("edge-revoked")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.CoreV1().Nodes().Delete(ctx, node, metav1.DeleteOptions{})
	})
	second, _ := in.startReplica(t, "e2e-2")

	// A token bound to the node that joins it any number of times.
	dir := filepath.Join(t.TempDir(), "edgesync")
	out := run(t, in.adminEnv(), serverBin, "token", "create", "--node", node, "--ttl", "10m", "--single-use=false",
		"--ca", filepath.Join(in.pki, "ca.crt"), "--server", in.addr, "--dir", dir)
	token := field(t, out, `token:\s+([a-z0-9]{6}\.[a-z0-9]{16})`)
	hash := field(t, out, `ca-cert-hash:\s+(sha256:[0-9a-f]{64})`)
	run(t, nil, agentBin, "join", "--server", in.addr, "--token", token, "--ca-cert-hash", hash, "--node", node, "--dir", dir)
	storeDir := filepath.Join(t.TempDir(), "store")
	agent := start(t, "edgesync-agent-"+node, nil, agentBin, "run",
		"--server", in.addr, "--node", node, "--dir", dir, "--store", storeDir)
	eventually(t, time.Minute, "node "+node+" to be Ready", func() error {
		return nodeReady(t.Context(), client, node, corev1.ConditionTrue)
	}, agent, in.server)

	// A pod on the node mounts a Secret and its ServiceAccount token: the
	// agent writes both into the pod's volumes.
	pod := podWithSecret(t, client, node)
	secretFile, tokenFile := podVolumeFiles(t, pod, storeDir)
	eventually(t, time.Minute, "the pod's secret and token on the edge's disk", func() error {
		for _, f := range []string{secretFile, tokenFile} {
			if _, err := os.Stat(f); err != nil {
				return err
			}
		}
		return nil
	}, agent, in.server)

	// Revoked through the second replica's AdminService.
	out, err := in.tryGrpcurlAt(t, second, "-d", fmt.Sprintf(`{"node_name": %q}`, node), "edgesync.v1.AdminService/RevokeNode")
	if err != nil || !strings.Contains(out, `"generation": "1"`) {
		t.Fatalf("RevokeNode: %v\n%s", err, out)
	}
	// The first replica ends the session it holds.
	eventually(t, 30*time.Second, "the revoked node's session to end", func() error {
		out, err := in.tryGrpcurlAt(t, in.addr, "-d", fmt.Sprintf(`{"node_name": %q}`, node), "edgesync.v1.AdminService/GetSession")
		if err == nil || !strings.Contains(err.Error()+out, "NotFound") {
			return fmt.Errorf("session still there: %v %s", err, out)
		}
		return nil
	}, in.server)
	// The edge deletes the credentials it holds: the files leave the
	// pod's volumes, the objects its store.
	eventually(t, 30*time.Second, "the revoked edge to delete the pod's secret and token", func() error {
		for _, f := range []string{secretFile, tokenFile} {
			if _, err := os.Stat(f); !os.IsNotExist(err) {
				return fmt.Errorf("%s is still there (%v)", f, err)
			}
		}
		return nil
	}, agent)
	agent.stop(t)
	if held := heldKinds(t, storeDir); held["Secret"] != 0 || held["Token"] != 0 || held["Pod"] == 0 {
		t.Errorf("the revoked edge's store holds %v; want no Secret and no Token, and its pods", held)
	}
	if log, _ := os.ReadFile(agent.log); !strings.Contains(string(log), "certificates were revoked by an operator: deleted the Secrets and ServiceAccount tokens") {
		t.Errorf("the agent's log does not say why it deleted its credentials:\n%s", log)
	}

	// The node's certificate, on every service and both replicas.
	want := fmt.Sprintf("node %q was revoked by an operator at", node)
	for _, addr := range []string{in.addr, second} {
		for call, err := range callsAs(t, addr, filepath.Join(in.pki, "ca.crt"), filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key")) {
			st := status.Convert(err)
			if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), want) || !strings.Contains(st.Message(), "join again with a new token") {
				t.Errorf("%s at %s with the revoked certificate: %v; want PermissionDenied saying %q", call, addr, err, want)
			}
		}
	}

	// The token it joined with was made before the revocation.
	msg := fail(t, agentBin, "join", "--server", second, "--token", token, "--ca-cert-hash", hash, "--node", node, "--dir", t.TempDir())
	if !strings.Contains(msg, "PermissionDenied") || !strings.Contains(msg, "made before node \""+node+"\" was revoked") {
		t.Fatalf("join with a token made before the revocation said %q, want PermissionDenied: made before ... revoked", msg)
	}

	// The command line revokes again and deletes the tokens bound to it.
	out = run(t, in.adminEnv(), serverBin, "node", "revoke", node)
	if !strings.Contains(out, "revoked node "+node+" (certificate generation 2)") || !strings.Contains(out, "deleted token "+token[:6]) {
		t.Fatalf("node revoke printed:\n%s", out)
	}

	// A new token joins it again, and its new certificate works.
	out = run(t, in.adminEnv(), serverBin, "token", "create", "--node", node, "--ttl", "10m",
		"--ca", filepath.Join(in.pki, "ca.crt"), "--server", in.addr)
	fresh := field(t, out, `token:\s+([a-z0-9]{6}\.[a-z0-9]{16})`)
	dir2 := filepath.Join(t.TempDir(), "edgesync")
	run(t, nil, agentBin, "join", "--server", second, "--token", fresh, "--ca-cert-hash", hash, "--node", node, "--dir", dir2)
	agent = start(t, "edgesync-agent-"+node+"-again", nil, agentBin, "run",
		"--server", in.addr, "--node", node, "--dir", dir2, "--store", filepath.Join(t.TempDir(), "store"))
	eventually(t, time.Minute, "the node joined again to hold a session", func() error {
		out, err := in.tryGrpcurlAt(t, in.addr, "-d", fmt.Sprintf(`{"node_name": %q}`, node), "edgesync.v1.AdminService/GetSession")
		if err != nil || !strings.Contains(out, `"initialSyncComplete": true`) {
			return fmt.Errorf("no synced session: %v %s", err, out)
		}
		return nil
	}, agent, in.server)
}

// podWithSecret creates, in a new namespace, a Secret and a pod that
// mounts it, placed by the scheduler on node, and returns the pod.
func podWithSecret(t *testing.T, client kubernetes.Interface, node string) *corev1.Pod {
	t.Helper()
	ns := testcluster.Namespace(t, client)
	if _, err := client.CoreV1().Secrets(ns).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "creds"}, StringData: map[string]string{"password": "e2e"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{corev1.LabelHostname: node},
			Tolerations:  []corev1.Toleration{{Key: controllers.DefaultEdgeLabel, Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "web", Image: "nginx:1.27",
				VolumeMounts: []corev1.VolumeMount{{Name: "creds", MountPath: "/etc/creds"}}}},
			Volumes: []corev1.Volume{{Name: "creds", VolumeSource: corev1.VolumeSource{
				Secret: &corev1.SecretVolumeSource{SecretName: "creds"}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// podVolumeFiles are where the agent's runtime writes the pod's secret
// and its ServiceAccount token.
func podVolumeFiles(t *testing.T, pod *corev1.Pod, storeDir string) (secret, token string) {
	t.Helper()
	vols := filepath.Join(storeDir, agent.PodsDir, string(pod.UID), "volumes")
	for _, v := range pod.Spec.Volumes {
		if strings.HasPrefix(v.Name, "kube-api-access-") {
			return filepath.Join(vols, "creds", "password"), filepath.Join(vols, v.Name, "token")
		}
	}
	t.Fatal("the pod has no kube-api-access volume (is ServiceAccount admission on?)")
	return "", ""
}

// heldKinds counts what the store at dir holds, by kind.
func heldKinds(t *testing.T, dir string) map[string]int {
	t.Helper()
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	recs, err := st.List(edgesyncv1.Kind_KIND_UNSPECIFIED)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, r := range recs {
		out[store.KindName(r.Key.Kind)]++
	}
	return out
}
