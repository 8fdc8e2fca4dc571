package realnode_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/edgesync/edgesync/edgeclient/kubeletproxy"
	"github.com/edgesync/edgesync/internal/realnode"
	"github.com/edgesync/edgesync/internal/repo"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, repo.ClientGoLeakOptions()...)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// eventually polls check every 200ms until it returns nil or timeout.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		<-tick.C
	}
}

// TestStandaloneNodeRunsAStaticPod runs the harness's parts without the
// cloud: containerd with the locally built images, the kubelet standalone
// with a static pod of the web image, and the agent's kubelet proxy in
// front of the kubelet's server. The web server answers on the pod's IP,
// the kubelet's /pods and /stats/summary answer through the proxy (and
// nothing without the agent's certificate), and removing the static pod
// removes its containers from containerd.
func TestStandaloneNodeRunsAStaticPod(t *testing.T) {
	if why := realnode.Unsupported(); why != "" {
		repo.Missing(t, "a machine that runs containerd", why)
	}
	kubeletBin := repo.Binary(t, "kubelet")
	ctx := t.Context()
	dir := t.TempDir()

	ctrd, err := realnode.StartContainerd(ctx, filepath.Join(dir, "containerd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ctrd.Stop(context.Background()); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
		if _, err := net.InterfaceByName(ctrd.Bridge); err == nil {
			t.Errorf("bridge %s left behind", ctrd.Bridge)
		}
	})
	creds, err := kubeletproxy.EnsureCredentials(filepath.Join(dir, "kubelet-pki"))
	if err != nil {
		t.Fatal(err)
	}
	static := filepath.Join(dir, "static")
	if err := os.MkdirAll(static, 0o700); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "web", Image: realnode.WebImage, ImagePullPolicy: corev1.PullNever,
		}}},
	}
	manifest, err := yaml.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(static, "web.yaml"), manifest, 0o600); err != nil {
		t.Fatal(err)
	}
	kubelet, err := realnode.StartKubelet(ctx, realnode.KubeletOptions{
		Binary: kubeletBin, Dir: filepath.Join(dir, "kubelet"), Node: "standalone", Runtime: ctrd,
		StaticPodDir: static, Port: freePort(t), HealthzPort: freePort(t),
		ClientCAFile: creds.Path(kubeletproxy.CAFile), TLSCertFile: creds.Path(kubeletproxy.ServerCertFile), TLSKeyFile: creds.Path(kubeletproxy.ServerKeyFile),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kubelet.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{kubelet.Log(), ctrd.Log()} {
				b, _ := os.ReadFile(f)
				if len(b) > 20000 {
					b = b[len(b)-20000:]
				}
				t.Logf("--- %s (tail) ---\n%s", f, b)
			}
		}
	})

	proxy, err := kubeletproxy.New(kubeletproxy.Config{URL: kubelet.URL(), Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	front := httptest.NewServer(proxy)
	defer front.Close()

	get := func(path string) (string, error) {
		resp, err := front.Client().Get(front.URL + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
		}
		return string(b), nil
	}
	var podIP string
	eventually(t, 2*time.Minute, "the static pod to run with an IP", func() error {
		body, err := get("/pods")
		if err != nil {
			return err
		}
		var list corev1.PodList
		if err := json.Unmarshal([]byte(body), &list); err != nil {
			return err
		}
		for _, p := range list.Items {
			if strings.HasPrefix(p.Name, "web-") && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				podIP = p.Status.PodIP
				return nil
			}
		}
		return fmt.Errorf("no running web pod in /pods yet")
	})
	if !ctrd.Subnet.Contains(net.ParseIP(podIP)) {
		t.Errorf("pod IP %s is not in the node's subnet %s", podIP, ctrd.Subnet)
	}
	eventually(t, 30*time.Second, "the web server on the pod's IP", func() error {
		resp, err := http.Get(fmt.Sprintf("http://%s:%d/", podIP, realnode.WebPort))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != realnode.WebIndex {
			return fmt.Errorf("got %q", b)
		}
		return nil
	})
	eventually(t, time.Minute, "/stats/summary to show the pod", func() error {
		body, err := get("/stats/summary")
		if err == nil && !strings.Contains(body, `"name": "web-standalone"`) && !strings.Contains(body, `"name":"web-standalone"`) {
			err = fmt.Errorf("no web-standalone in %.300s", body)
		}
		return err
	})
	if _, err := get("/configz"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("/configz through the agent's proxy: %v, want 404 (not forwarded)", err)
	}

	// The kubelet's server lets in the agent's certificate only.
	bare := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the point is the missing client cert
	defer bare.CloseIdleConnections()
	if resp, err := bare.Get(kubelet.URL() + "/pods"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("/pods without a client certificate: %s, want 401", resp.Status)
		}
	}

	// Removing the static pod removes its containers.
	ctrs, err := ctrd.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !running(ctrs, "web") {
		t.Fatalf("containerd does not run the web container: %+v", ctrs)
	}
	if err := os.Remove(filepath.Join(static, "web.yaml")); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the web pod's containers to be removed", func() error {
		ctrs, err := ctrd.Containers(ctx)
		if err != nil {
			return err
		}
		for _, c := range ctrs {
			if c.Pod == "web-standalone" && c.Running {
				return fmt.Errorf("still running: %+v", c)
			}
		}
		return nil
	})
}

func running(ctrs []realnode.Container, name string) bool {
	for _, c := range ctrs {
		if c.Name == name && c.Running {
			return true
		}
	}
	return false
}
