package e2e_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// kubeletClientCAEnv names the CA of the apiserver's kubelet client
// certificate; devcluster exec exports it.
const kubeletClientCAEnv = "EDGESYNC_TEST_KUBELET_CLIENT_CA"

// installWithKubelet starts edgesync-server with its kubelet endpoint
// trusting the devcluster apiserver's kubelet client CA.
func installWithKubelet(t *testing.T) *installation {
	t.Helper()
	testcluster.RESTConfig(t)
	ca := os.Getenv(kubeletClientCAEnv)
	if ca == "" {
		t.Fatalf("%s is not set: run the tests under a devcluster built from this tree (make devcluster)", kubeletClientCAEnv)
	}
	return install(t, "--kubelet-listen", "127.0.0.1:0", "--kubelet-client-ca", ca)
}

// edgePod runs a one-replica web Deployment on a new edge node (placed by
// kube-scheduler through the node's unique group label) and returns the
// namespace, the running pod and the node's agent.
func edgePod(t *testing.T, in *installation, client kubernetes.Interface, agentArgs ...string) (string, *corev1.Pod, *edgeAgent) {
	t.Helper()
	return edgePodWithPorts(t, in, client, nil, agentArgs...)
}

// edgePodWithPorts is edgePod, the pod's container declaring ports (the
// only ones port-forward reaches on a simulated runtime).
func edgePodWithPorts(t *testing.T, in *installation, client kubernetes.Interface, ports []int32, agentArgs ...string) (string, *corev1.Pod, *edgeAgent) {
	t.Helper()
	ns := testcluster.Namespace(t, client)
	group := testcluster.UniqueName("g")
	node := testcluster.UniqueName("edge")
	agent := in.startAgent(t, client, node, map[string]string{controllers.DefaultEdgeLabel: "", "e2e.edgesync.io/group": group}, agentArgs...)
	createWebConfig(t, client, ns)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: webPodSpec(group),
		},
	}
	for _, p := range ports {
		c := &dep.Spec.Template.Spec.Containers[0]
		c.Ports = append(c.Ports, corev1.ContainerPort{ContainerPort: p})
	}
	if _, err := client.AppsV1().Deployments(ns).Create(t.Context(), dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	eventually(t, time.Minute, "the web pod to run on "+node, func() error {
		pods, err := client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return err
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.Spec.NodeName == node && p.Status.Phase == corev1.PodRunning {
				pod = p
				return nil
			}
		}
		return fmt.Errorf("no running web pod on %s yet", node)
	}, agent.proc, in.server)
	eventually(t, time.Minute, "node "+node+" to advertise the kubelet endpoint", func() error {
		n, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n.Status.DaemonEndpoints.KubeletEndpoint.Port == 0 {
			return errors.New("no kubelet port in the Node's status")
		}
		return nil
	}, agent.proc, in.server)
	return ns, pod, agent
}

// kubectl runs kubectl with the admin kubeconfig and returns its combined
// output and error.
func (in *installation) kubectlRun(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, in.kubectl, args...)
	cmd.Env = append(os.Environ(), in.adminEnv()...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustKubectl runs kubectl and fails the test when it fails.
func (in *installation) mustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := in.kubectlRun(ctx, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// streamKubectl starts a kubectl that keeps running (logs -f, attach,
// port-forward) and returns its output, line by line; the test's end
// stops it.
func (in *installation) streamKubectl(t *testing.T, args ...string) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, in.kubectl, args...)
	cmd.Env = append(os.Environ(), in.adminEnv()...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(lines)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			select {
			case lines <- s.Text():
			default: // the test stopped reading
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = cmd.Wait()
	})
	return lines
}

// waitLine reads lines until one matches re.
func waitLine(t *testing.T, lines <-chan string, re *regexp.Regexp, what string) string {
	t.Helper()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	var seen []string
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("waiting for %s: kubectl ended; it printed:\n%s", what, strings.Join(seen, "\n"))
			}
			if re.MatchString(l) {
				return l
			}
			seen = append(seen, l)
		case <-timer.C:
			t.Fatalf("waiting for %s: not printed within 30s; kubectl printed:\n%s", what, strings.Join(seen, "\n"))
		}
	}
}

// TestKubectlReachesEdgePods runs kubectl logs, exec, attach and
// port-forward against a pod that kube-scheduler placed on an edge node:
// the apiserver calls the node's kubelet endpoint (edgesync-server's, as
// the Node's status says), which carries each request to the edge agent
// through a tunnel the agent opened.
func TestKubectlReachesEdgePods(t *testing.T) {
	in := installWithKubelet(t)
	client := testcluster.Client(t)
	podPort := loopbackHTTP(t) // the pod's port, which it declares
	ns, pod, agent := edgePodWithPorts(t, in, client, []int32{podPort}, "--allow-exec")

	t.Run("logs", func(t *testing.T) {
		out := in.mustKubectl(t, "-n", ns, "logs", pod.Name)
		for _, want := range []string{
			"started container web of pod " + ns + "/" + pod.Name + " (image nginx:1.27) on node " + agent.node,
			"env password (from secret web-credentials, 3 bytes)",
			"file /etc/web/greeting (5 bytes)",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("kubectl logs does not show %q; it printed:\n%s", want, out)
			}
		}
		if strings.Contains(out, "password=") {
			t.Errorf("kubectl logs shows the secret's value:\n%s", out)
		}
	})
	t.Run("logs --tail", func(t *testing.T) {
		// The container writes a line a second: wait for two.
		eventually(t, 30*time.Second, "the container to run two seconds", func() error {
			out, err := in.kubectlRun(t.Context(), "-n", ns, "logs", pod.Name, "--tail=2")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 || !strings.HasPrefix(lines[0], "running for ") || !strings.HasPrefix(lines[1], "running for ") {
				return fmt.Errorf("kubectl logs --tail=2 printed %q, want two 'running for' lines", out)
			}
			return nil
		}, agent.proc, in.server)
	})
	t.Run("logs -f", func(t *testing.T) {
		lines := in.streamKubectl(t, "-n", ns, "logs", "-f", "--tail=1", "--timestamps", pod.Name)
		first := waitLine(t, lines, regexp.MustCompile(`running for (\d+)s$`), "the last line")
		n := regexp.MustCompile(`running for (\d+)s$`).FindStringSubmatch(first)[1]
		next := waitLine(t, lines, regexp.MustCompile(`running for \d+s$`), "a line written after kubectl started following")
		if next == first || strings.HasSuffix(next, " running for "+n+"s") {
			t.Errorf("kubectl logs -f printed %q again, want a newer line", next)
		}
		if _, err := time.Parse(time.RFC3339Nano, strings.Fields(next)[0]); err != nil {
			t.Errorf("kubectl logs --timestamps printed %q: no timestamp first", next)
		}
	})
	t.Run("exec", func(t *testing.T) {
		out := in.mustKubectl(t, "-n", ns, "exec", pod.Name, "--", "cat", "/etc/web/greeting")
		if out != "hello" {
			t.Errorf("kubectl exec cat /etc/web/greeting printed %q, want the configmap's value %q", out, "hello")
		}
		out = in.mustKubectl(t, "-n", ns, "exec", pod.Name, "--", "sh", "-c", "echo $password $HOSTNAME")
		if want := "e2e " + pod.Name + "\n"; out != want {
			t.Errorf("kubectl exec printed %q, want the pod's environment %q", out, want)
		}
		out, err := in.kubectlRun(t.Context(), "-n", ns, "exec", pod.Name, "--", "sh", "-c", "echo to-stderr >&2; exit 3")
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 || !strings.Contains(out, "to-stderr") {
			t.Errorf("kubectl exec of a command exiting 3: %v, output %q; want exit code 3 and its stderr", err, out)
		}
	})
	t.Run("exec -it", func(t *testing.T) {
		cmd := exec.Command(in.kubectl, "-n", ns, "exec", "-it", pod.Name, "--", "sh")
		cmd.Env = append(os.Environ(), in.adminEnv()...)
		term, err := pty.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			term.Close()
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}()
		// The terminal's output, accumulated.
		chunks := make(chan string, 100)
		go func() {
			defer close(chunks)
			buf := make([]byte, 4096)
			for {
				n, err := term.Read(buf)
				if n > 0 {
					chunks <- string(buf[:n])
				}
				if err != nil {
					return
				}
			}
		}()
		var screen strings.Builder
		waitScreen := func(re *regexp.Regexp, what string) {
			t.Helper()
			timer := time.NewTimer(30 * time.Second)
			defer timer.Stop()
			for !re.MatchString(screen.String()) {
				select {
				case c, ok := <-chunks:
					if !ok {
						t.Fatalf("waiting for %s: kubectl ended; the terminal showed %q", what, screen.String())
					}
					screen.WriteString(c)
				case <-timer.C:
					t.Fatalf("waiting for %s: the terminal showed %q", what, screen.String())
				}
			}
		}
		// Type once the shell prompts (input typed earlier may be
		// discarded when kubectl puts the terminal in raw mode). The shell
		// sees a terminal; the arithmetic proves it ran the line.
		waitScreen(regexp.MustCompile(`[#$] $`), "the shell's prompt")
		if _, err := io.WriteString(term, "test -t 0 && echo tty-$((40+2))\n"); err != nil {
			t.Fatal(err)
		}
		waitScreen(regexp.MustCompile(`\ntty-42\r?\n`), "the shell's answer through the terminal")
		_, _ = io.WriteString(term, "exit\n")
	})
	t.Run("attach", func(t *testing.T) {
		lines := in.streamKubectl(t, "-n", ns, "attach", pod.Name, "-c", "web")
		waitLine(t, lines, regexp.MustCompile(`^running for \d+s$`), "the container's output")
	})
	t.Run("port-forward", func(t *testing.T) {
		local := freePort(t)
		lines := in.streamKubectl(t, "-n", ns, "port-forward", "pod/"+pod.Name, fmt.Sprintf("%d:%d", local, podPort))
		waitLine(t, lines, regexp.MustCompile(`^Forwarding from 127\.0\.0\.1`), "port-forward to listen")
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", local))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "served on the edge host" {
			t.Errorf("through kubectl port-forward: %q", body)
		}
	})
	t.Run("port-forward to a port the pod does not declare", func(t *testing.T) {
		// Listening on the edge host, but not the pod's: refused, and
		// kubectl says why.
		other := loopbackHTTP(t)
		local := freePort(t)
		lines := in.streamKubectl(t, "-n", ns, "port-forward", "pod/"+pod.Name, fmt.Sprintf("%d:%d", local, other))
		waitLine(t, lines, regexp.MustCompile(`^Forwarding from 127\.0\.0\.1`), "port-forward to listen")
		if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", local)); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Errorf("through kubectl port-forward to undeclared port %d: %d %q, want no answer", other, resp.StatusCode, body)
		}
		waitLine(t, lines, regexp.MustCompile(regexp.QuoteMeta(fmt.Sprintf(
			"port %d is not a port of pod %s/%s (it declares %d): port-forward reaches only the ports its containers declare",
			other, ns, pod.Name, podPort))), "kubectl to print the refusal")
	})
}

// loopbackHTTP serves "served on the edge host" on the loopback (the edge
// host's: this machine) and returns its port.
func loopbackHTTP(t *testing.T) int32 {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "served on the edge host")
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Close() })
	return int32(lis.Addr().(*net.TCPAddr).Port)
}

// TestKubeletEndpointRefusesOthers calls the kubelet endpoint directly:
// without a client certificate (401), and with a certificate of the
// apiserver's CA whose user may not use nodes/proxy (403, from the
// SubjectAccessReview).
func TestKubeletEndpointRefusesOthers(t *testing.T) {
	in := installWithKubelet(t)
	client := testcluster.Client(t)
	ns, pod, agent := edgePod(t, in, client)
	n, err := client.CoreV1().Nodes().Get(t.Context(), agent.node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://%s:%d/containerLogs/%s/%s/web", n.Status.Addresses[0].Address, n.Status.DaemonEndpoints.KubeletEndpoint.Port, ns, pod.Name)

	get := func(certs []tls.Certificate) (int, string) {
		t.Helper()
		c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			InsecureSkipVerify: true, // the apiserver does not verify kubelets by default either
			Certificates:       certs,
		}}}
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get(nil); code != http.StatusUnauthorized || !strings.Contains(body, "client certificate") {
		t.Errorf("without a client certificate: %d %q, want 401 naming the client certificate", code, body)
	}
	pkiDir := os.Getenv("EDGESYNC_TEST_DEVCLUSTER_PKI")
	sched, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "kube-scheduler.crt"), filepath.Join(pkiDir, "kube-scheduler.key"))
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get([]tls.Certificate{sched}); code != http.StatusForbidden || !strings.Contains(body, "user=system:kube-scheduler") || !strings.Contains(body, "subresource=proxy") {
		t.Errorf("as system:kube-scheduler: %d %q, want 403 naming the user and nodes/proxy", code, body)
	}
	apiserver, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "apiserver-kubelet-client.crt"), filepath.Join(pkiDir, "apiserver-kubelet-client.key"))
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get([]tls.Certificate{apiserver}); code != http.StatusOK || !strings.Contains(body, "started container web") {
		t.Errorf("as the apiserver: %d %q, want the log", code, body)
	}
}

// TestExecToDisconnectedNodeFails stops a node's agent: kubectl exec then
// fails at once, naming the node, rather than hanging.
func TestExecToDisconnectedNodeFails(t *testing.T) {
	in := installWithKubelet(t)
	client := testcluster.Client(t)
	ns, pod, agent := edgePod(t, in, client, "--allow-exec")
	in.mustKubectl(t, "-n", ns, "exec", pod.Name, "--", "true")
	agent.proc.stop(t)
	// The agent closed its stream as it stopped; the server forgets the
	// session at once.
	eventually(t, 30*time.Second, "the server to forget the session of "+agent.node, func() error {
		if out := in.grpcurl(t, "edgesync.v1.AdminService/ListSessions"); strings.Contains(out, agent.node) {
			return fmt.Errorf("ListSessions still shows %s", agent.node)
		}
		return nil
	}, in.server)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"-n", ns, "exec", pod.Name, "--", "true"},
		{"-n", ns, "logs", pod.Name},
	} {
		out, err := in.kubectlRun(ctx, args...)
		if ctx.Err() != nil {
			t.Fatalf("kubectl %s still runs after 20s", strings.Join(args, " "))
		}
		if err == nil || !strings.Contains(out, fmt.Sprintf("%q", agent.node)) || !strings.Contains(out, "not connected") {
			t.Errorf("kubectl %s to a disconnected node: %v, %q; want an error naming node %q", strings.Join(args, " "), err, out, agent.node)
		}
	}
}

// TestKubectlFollowsTheNodeToAnotherReplica runs two replicas that own
// nodes through Leases. The replica holding a node's session writes its
// own kubelet endpoint into the Node's status, so when the node's agent
// moves to the other replica, kubectl logs and exec follow it there.
func TestKubectlFollowsTheNodeToAnotherReplica(t *testing.T) {
	testcluster.RESTConfig(t)
	ca := os.Getenv(kubeletClientCAEnv)
	if ca == "" {
		t.Fatalf("%s is not set: run the tests under a devcluster built from this tree (make devcluster)", kubeletClientCAEnv)
	}
	replicaArgs := []string{"--kubelet-listen", "127.0.0.1:0", "--kubelet-client-ca", ca, "--ownership-namespace", "edgesync-system"}
	in := install(t, replicaArgs...)
	client := testcluster.Client(t)

	// A second replica with the same identity and its own ports.
	token := strings.TrimSpace(run(t, in.adminEnv(), in.kubectl,
		"-n", "edgesync-system", "create", "token", "edgesync-server", "--duration=1h"))
	addrB := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	serverB := start(t, "edgesync-server-b", nil, filepath.Join(filepath.Dir(in.kubectl), "edgesync-server"), append([]string{
		"--listen", addrB,
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--tls-ca", filepath.Join(in.pki, "ca.crt"),
		"--tls-cert", filepath.Join(in.pki, "server.crt"),
		"--tls-key", filepath.Join(in.pki, "server.key"),
		"--kubeconfig", writeTokenKubeconfig(t, in.kubeconfig, token),
		"--server-id", "e2e-b", "--log-format", "console"}, replicaArgs...)...)

	ns, pod, agent := edgePod(t, in, client, "--allow-exec")
	portOf := func() int32 {
		n, err := client.CoreV1().Nodes().Get(t.Context(), agent.node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n.Status.DaemonEndpoints.KubeletEndpoint.Port
	}
	portA := portOf()
	in.mustKubectl(t, "-n", ns, "logs", pod.Name, "--tail=1")

	agent.proc.stop(t)
	for i, a := range agent.args {
		if a == "--server" {
			agent.args[i+1] = addrB
		}
	}
	agent.start(t)
	eventually(t, time.Minute, "the Node to name replica e2e-b's kubelet endpoint", func() error {
		if p := portOf(); p == portA || p == 0 {
			return fmt.Errorf("the Node's kubelet port is still %d", p)
		}
		return nil
	}, agent.proc, serverB, in.server)
	eventually(t, 30*time.Second, "kubectl exec through replica e2e-b", func() error {
		out, err := in.kubectlRun(t.Context(), "-n", ns, "exec", pod.Name, "--", "cat", "/etc/web/greeting")
		if err != nil || out != "hello" {
			return fmt.Errorf("%v: %q", err, out)
		}
		return nil
	}, agent.proc, serverB)
}

// TestKubeletEndpointCarriesWebSocket calls the kubelet endpoint directly,
// as the apiserver's kubelet client, with a WebSocket exec (the apiserver
// itself talks SPDY to kubelets, as TestKubectlReachesEdgePods shows): the
// upgrade passes through the tunnel to the agent's streaming server
// unchanged.
func TestKubeletEndpointCarriesWebSocket(t *testing.T) {
	in := installWithKubelet(t)
	client := testcluster.Client(t)
	ns, pod, agent := edgePod(t, in, client, "--allow-exec")
	n, err := client.CoreV1().Nodes().Get(t.Context(), agent.node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pkiDir := os.Getenv("EDGESYNC_TEST_DEVCLUSTER_PKI")
	cfg := &rest.Config{
		Host: fmt.Sprintf("https://%s:%d", n.Status.Addresses[0].Address, n.Status.DaemonEndpoints.KubeletEndpoint.Port),
		TLSClientConfig: rest.TLSClientConfig{
			Insecure: true, // the apiserver does not verify kubelets by default either
			CertFile: filepath.Join(pkiDir, "apiserver-kubelet-client.crt"),
			KeyFile:  filepath.Join(pkiDir, "apiserver-kubelet-client.key"),
		},
	}
	url := cfg.Host + "/exec/" + ns + "/" + pod.Name + "/web?command=cat&command=/etc/web/greeting&output=1&error=1"
	// The kubelet's streaming server speaks channel.k8s.io up to v4 over
	// WebSocket (v5 is the apiserver's).
	exec, err := remotecommand.NewWebSocketExecutorForProtocols(cfg, http.MethodGet, url, "v4.channel.k8s.io")
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		t.Fatalf("WebSocket exec: %v (stderr %q)", err, stderr.String())
	}
	if stdout.String() != "hello" {
		t.Errorf("WebSocket exec printed %q, want %q", stdout.String(), "hello")
	}
}
