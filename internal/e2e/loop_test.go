package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// agentSaw reports whether the agent's output has an event line such as
// "ADDED    Pod       ns/web rv=12".
func agentSaw(agent *process, event, kind, nsName, rv string) error {
	data, err := os.ReadFile(agent.log)
	if err != nil {
		return err
	}
	pattern := fmt.Sprintf(`(?m)\s%s\s+%s\s+%s rv=%s\b`, event, kind, regexp.QuoteMeta(nsName), regexp.QuoteMeta(rv))
	if regexp.MustCompile(pattern).Match(data) {
		return nil
	}
	return fmt.Errorf("agent has not printed %s %s %s rv=%s yet", event, kind, nsName, rv)
}

// agentSawAtLeast is agentSaw for an object that controllers may change
// right after the test wrote it (a pod's tolerations, say): the edge gets
// the latest version, so any version from rv on will do. The devcluster's
// resourceVersions are etcd revisions, which order numerically.
func agentSawAtLeast(agent *process, event, kind, nsName, rv string) error {
	data, err := os.ReadFile(agent.log)
	if err != nil {
		return err
	}
	from, err := strconv.ParseInt(rv, 10, 64)
	if err != nil {
		return fmt.Errorf("resourceVersion %q is not a number", rv)
	}
	pattern := fmt.Sprintf(`(?m)\s%s\s+%s\s+%s rv=(\d+)\b`, event, kind, regexp.QuoteMeta(nsName))
	for _, m := range regexp.MustCompile(pattern).FindAllSubmatch(data, -1) {
		if got, err := strconv.ParseInt(string(m[1]), 10, 64); err == nil && got >= from {
			return nil
		}
	}
	return fmt.Errorf("agent has not printed %s %s %s at rv=%s or later yet", event, kind, nsName, rv)
}

// TestFullLoop runs the product as `make dev` does, with real binaries: a pod
// created in the apiserver reaches the agent with its configmap and secret,
// the agent's status for it comes back, a configmap update reaches the agent,
// and deleting the pod removes pod, configmap and secret from the agent's
// store. grpcurl sees the agent's session.
func TestFullLoop(t *testing.T) {
	in := install(t)
	client := testcluster.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	node := testcluster.UniqueName("edge")
	certFile, keyFile := in.nodeCert(t, node)
	store := filepath.Join(t.TempDir(), "store")
	agentBin := repo.Binary(t, "edgesync-agent")
	agent := start(t, "edgesync-agent", nil, agentBin,
		"--server", in.addr, "--node", node,
		"--ca", filepath.Join(in.pki, "ca.crt"), "--cert", certFile, "--key", keyFile,
		"--store", store)
	eventually(t, time.Minute, "node "+node+" to register", func() error {
		_, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err
	}, agent, in.server)

	sessions := in.grpcurl(t, "edgesync.v1.AdminService/ListSessions")
	if !strings.Contains(sessions, `"nodeName": "`+node+`"`) {
		t.Fatalf("grpcurl ListSessions does not show %s:\n%s", node, sessions)
	}
	services := in.grpcurl(t, "list")
	for _, svc := range []string{"edgesync.v1.SyncService", "edgesync.v1.AdminService", "grpc.health.v1.Health"} {
		if !strings.Contains(services, svc) {
			t.Errorf("grpcurl list does not show %s:\n%s", svc, services)
		}
	}
	if desc := in.grpcurl(t, "describe", "edgesync.v1.SyncService"); !strings.Contains(desc, "rpc Sync ( stream .edgesync.v1.SyncRequest ) returns ( stream .edgesync.v1.SyncResponse )") {
		t.Errorf("grpcurl describe edgesync.v1.SyncService:\n%s", desc)
	}
	if health := in.grpcurl(t, "grpc.health.v1.Health/Check"); !strings.Contains(health, "SERVING") {
		t.Errorf("grpcurl health check: %s", health)
	}

	ns := testcluster.Namespace(t, client)
	cm, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "web-config"},
		Data:       map[string]string{"greeting": "hello"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	secret, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "web-credentials"},
		StringData: map[string]string{"password": "s3cret-e2e"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name: "web", Image: "nginx:1.27",
				EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: secret.Name}}}},
				VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/web"}},
			}},
			Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
				ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: cm.Name}}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	for _, want := range []struct{ kind, name, rv string }{
		{"Pod", pod.Name, pod.ResourceVersion},
		{"ConfigMap", cm.Name, cm.ResourceVersion},
		{"Secret", secret.Name, secret.ResourceVersion},
	} {
		eventually(t, time.Minute, "the agent to receive "+want.kind+" "+want.name, func() error {
			return agentSawAtLeast(agent, "ADDED", want.kind, ns+"/"+want.name, want.rv)
		}, agent, in.server)
	}
	eventually(t, time.Minute, "the agent's Running status to reach the apiserver", func() error {
		got, err := client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("pod phase is %q", got.Status.Phase)
		}
		return nil
	}, agent, in.server)

	cm.Data["greeting"] = "hello again"
	updated, err := client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the configmap update to reach the agent", func() error {
		return agentSaw(agent, "MODIFIED", "ConfigMap", ns+"/"+cm.Name, updated.ResourceVersion)
	}, agent, in.server)

	// The pod is bound to a node, so deleting it only marks it; the agent
	// reports it terminated and the server deletes it for good.
	if err := client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the pod to be gone from the apiserver", func() error {
		_, err := client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("pod still exists (get: %v)", err)
	}, agent, in.server)
	for _, gone := range []struct{ kind, name string }{{"Pod", pod.Name}, {"ConfigMap", cm.Name}, {"Secret", secret.Name}} {
		eventually(t, time.Minute, "the agent to delete "+gone.kind+" "+gone.name, func() error {
			data, err := os.ReadFile(agent.log)
			if err != nil {
				return err
			}
			if regexp.MustCompile(fmt.Sprintf(`(?m)\sDELETED\s+%s\s+%s `, gone.kind, regexp.QuoteMeta(ns+"/"+gone.name))).Match(data) {
				return nil
			}
			return fmt.Errorf("no DELETED line yet")
		}, agent, in.server)
	}

	// The store is what survives a restart: stop the agent and read it.
	agent.stop(t)
	listing := run(t, nil, agentBin, "list", "--store", store)
	if strings.Contains(listing, ns) {
		t.Fatalf("the agent's store still holds objects of %s after the pod was deleted:\n%s", ns, listing)
	}
	data, err := os.ReadFile(agent.log)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "s3cret-e2e") {
		t.Fatal("the agent's output contains the secret's value")
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, "refused report") && strings.Contains(line, "node/") {
			t.Errorf("the server refused a node report of a freshly started agent: %s", line)
		}
	}
}
