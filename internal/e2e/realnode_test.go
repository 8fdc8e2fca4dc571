package e2e_test

import (
	"context"
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
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/edgeclient/localapi"
	"github.com/edgesync/edgesync/internal/realnode"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// realNode is an edge node of real parts: its own containerd, the stock
// kubelet, and edgesync-agent --runtime kubelet joined with a token.
type realNode struct {
	name       string
	group      string // the e2e.edgesync.io/group label workloads select it by
	ctrd       *realnode.Containerd
	kubelet    *realnode.Kubelet
	agent      *edgeAgent
	kubeletDir string // what the agent writes for the kubelet
	localAPI   string // the local API's host:port
}

// installWithRealKubelet starts edgesync-server with its kubelet endpoint
// on this machine's first non-loopback address: the apiserver's node proxy
// (kubectl get --raw /api/v1/nodes/NODE/proxy/...) refuses loopback
// addresses.
func installWithRealKubelet(t *testing.T) *installation {
	t.Helper()
	testcluster.RESTConfig(t)
	ca := os.Getenv(kubeletClientCAEnv)
	if ca == "" {
		t.Fatalf("%s is not set: run the tests under a devcluster built from this tree (make devcluster)", kubeletClientCAEnv)
	}
	ip := hostAddress(t)
	return install(t, "--kubelet-listen", net.JoinHostPort(ip, "0"), "--kubelet-client-ca", ca)
}

// hostAddress is the first IPv4 address of an interface that is up, not
// loopback and not a pod bridge.
func hostAddress(t *testing.T) string {
	t.Helper()
	ifaces, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, iface := range ifaces {
		if iface.Flags&net.FlagUp == 0 || iface.Flags&net.FlagLoopback != 0 ||
			strings.HasPrefix(iface.Name, "esn") || strings.HasPrefix(iface.Name, "cni") || strings.HasPrefix(iface.Name, "veth") {
			continue
		}
		addrs, _ := iface.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				return ipn.IP.String()
			}
		}
	}
	t.Fatal("this machine has no non-loopback IPv4 address for the kubelet endpoint (the apiserver's node proxy refuses loopback)")
	return ""
}

// startRealNode joins a node with a token and starts containerd, the agent
// and the kubelet for it, and waits until its Node is Ready from the
// kubelet's own status.
func (in *installation) startRealNode(t *testing.T, client kubernetes.Interface) *realNode {
	t.Helper()
	if why := realnode.Unsupported(); why != "" {
		repo.Missing(t, "a machine that runs containerd", why)
	}
	kubeletBin := repo.Binary(t, "kubelet")
	n := &realNode{name: testcluster.UniqueName("real"), group: testcluster.UniqueName("g")}
	dir := t.TempDir()

	// Join as an operator would: the command token create prints.
	joinDir := filepath.Join(dir, "edgesync")
	out := run(t, in.adminEnv(), repo.Binary(t, "edgesync-server"), "token", "create", "--node", n.name, "--ttl", "10m",
		"--single-use", "--ca", filepath.Join(in.pki, "ca.crt"), "--server", in.addr, "--dir", joinDir)
	join := strings.Fields(strings.ReplaceAll(out[strings.Index(out, "edgesync-agent join"):], "\\\n", ""))
	run(t, nil, repo.Binary(t, "edgesync-agent"), join[1:]...)

	var err error
	n.ctrd, err = realnode.StartContainerd(t.Context(), filepath.Join(dir, "containerd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.ctrd.Stop(context.Background()); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	})

	n.kubeletDir = filepath.Join(dir, "agent-kubelet")
	kubeletPort := freePort(t)
	n.localAPI = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n.agent = &edgeAgent{node: n.name, store: filepath.Join(dir, "store")}
	n.agent.args = []string{"run", "--server", in.addr, "--node", n.name, "--dir", joinDir, "--store", n.agent.store,
		"--runtime", "kubelet", "--kubelet-dir", n.kubeletDir,
		"--local-api-address", n.localAPI,
		"--kubelet-url", fmt.Sprintf("https://127.0.0.1:%d", kubeletPort)}
	n.agent.start(t)
	kubeconfig := filepath.Join(n.kubeletDir, "kubeconfig")
	eventually(t, 30*time.Second, "the agent to write the kubelet's kubeconfig", func() error {
		_, err := os.Stat(kubeconfig)
		return err
	}, n.agent.proc)

	pki := filepath.Join(n.kubeletDir, "pki")
	n.kubelet, err = realnode.StartKubelet(t.Context(), realnode.KubeletOptions{
		Binary: kubeletBin, Dir: filepath.Join(dir, "kubelet"), Node: n.name, Kubeconfig: kubeconfig, Runtime: n.ctrd,
		Port: kubeletPort, HealthzPort: freePort(t),
		ClientCAFile: filepath.Join(pki, "kubelet-ca.crt"),
		TLSCertFile:  filepath.Join(pki, "kubelet-server.crt"), TLSKeyFile: filepath.Join(pki, "kubelet-server.key"),
		Labels: map[string]string{"e2e.edgesync.io/group": n.group},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.kubelet.Stop()
		if t.Failed() {
			for _, f := range []string{n.kubelet.Log(), n.ctrd.Log()} {
				b, _ := os.ReadFile(f)
				if len(b) > 30000 {
					b = b[len(b)-30000:]
				}
				t.Logf("--- %s (tail) ---\n%s", f, b)
			}
		}
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.CoreV1().Nodes().Delete(ctx, n.name, metav1.DeleteOptions{})
	})
	eventually(t, 2*time.Minute, "node "+n.name+" to be Ready", func() error {
		if err := n.kubelet.Exited(); err != nil {
			return err
		}
		node, err := client.CoreV1().Nodes().Get(t.Context(), n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !strings.HasPrefix(node.Status.NodeInfo.KubeletVersion, "v1.") || !strings.HasPrefix(node.Status.NodeInfo.ContainerRuntimeVersion, "containerd://") {
			return fmt.Errorf("node info %+v is not the kubelet's", node.Status.NodeInfo)
		}
		return nodeReady(t.Context(), client, n.name, corev1.ConditionTrue)
	}, n.agent.proc, in.server)
	return n
}

// containers lists the web containers containerd runs for ns, by pod.
func (n *realNode) containers(ctx context.Context, ns string) (map[string][]realnode.Container, error) {
	all, err := n.ctrd.Containers(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]realnode.Container{}
	for _, c := range all {
		if c.Namespace == ns && c.Name != "" {
			out[c.Pod] = append(out[c.Pod], c)
		}
	}
	return out, nil
}

// realWebDeployment is two replicas of the locally built web image on the
// node, ready only once /www/ready exists (the readiness probe), with a
// ConfigMap volume, a Secret env var and the ServiceAccount token the
// apiserver's admission projects.
func realWebDeployment(n *realNode) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec: corev1.PodSpec{
					NodeSelector:                  map[string]string{controllers.DefaultEdgeLabel: "", "e2e.edgesync.io/group": n.group},
					Tolerations:                   []corev1.Toleration{{Key: controllers.DefaultEdgeLabel, Operator: corev1.TolerationOpExists}},
					TerminationGracePeriodSeconds: ptr.To[int64](2),
					DNSPolicy:                     corev1.DNSDefault, // the node has no cluster DNS
					Containers: []corev1.Container{{
						Name: "web", Image: realnode.WebImage, ImagePullPolicy: corev1.PullNever,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: realnode.WebPort}},
						Env: []corev1.EnvVar{{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
							LocalObjectReference: corev1.LocalObjectReference{Name: "web-credentials"}, Key: "password"}}}},
						VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/web"}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}},
							PeriodSeconds: 1, FailureThreshold: 1,
						},
					}},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
						ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "web-config"}}}}},
				},
			},
		},
	}
}

// TestRealEdgeNode runs what a user runs on a real edge node, through
// edgesync: a Deployment of a locally built image, kubectl into its
// containers, a crashing container, the node offline and back, and the
// Deployment's deletion, each checked against the kubelet's own status
// and containerd.
func TestRealEdgeNode(t *testing.T) {
	in := installWithRealKubelet(t)
	client := testcluster.Client(t)
	parent := t // processes restarted in subtests live as long as the test
	n := in.startRealNode(t, client)
	ns := testcluster.Namespace(t, client)
	createWebConfig(t, client, ns)
	if _, err := client.AppsV1().Deployments(ns).Create(t.Context(), realWebDeployment(n), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	procs := func() []*process { return []*process{n.agent.proc, in.server} }

	// The pods run real containers, but are not Ready until the probe
	// passes.
	var pods []corev1.Pod
	eventually(t, 2*time.Minute, "two web pods Running on "+n.name, func() error {
		list, err := client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return err
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if p.Spec.NodeName == n.name && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" &&
				len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Running != nil {
				pods = append(pods, p)
			}
		}
		if len(pods) != 2 {
			return fmt.Errorf("%d of 2 pods running on %s", len(pods), n.name)
		}
		return nil
	}, procs()...)
	for _, p := range pods {
		cs := p.Status.ContainerStatuses[0]
		if !strings.HasPrefix(cs.ContainerID, "containerd://") || cs.Ready {
			t.Errorf("pod %s: container %s ready=%v before its readiness probe can pass, want a containerd container not ready", p.Name, cs.ContainerID, cs.Ready)
		}
		if !n.ctrd.Subnet.Contains(net.ParseIP(p.Status.PodIP)) {
			t.Errorf("pod %s has IP %s outside the node's pod network %s", p.Name, p.Status.PodIP, n.ctrd.Subnet)
		}
		resp, err := http.Get(fmt.Sprintf("http://%s:%d/", p.Status.PodIP, realnode.WebPort))
		if err != nil {
			t.Fatalf("the web server of %s: %v", p.Name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != realnode.WebIndex {
			t.Errorf("the web server of %s answered %q", p.Name, body)
		}
	}
	ctrs, err := n.containers(t.Context(), ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if len(ctrs[p.Name]) != 1 || !ctrs[p.Name][0].Running {
			t.Errorf("containerd runs %+v for pod %s, want one running web container", ctrs[p.Name], p.Name)
		}
	}
	dep, err := client.AppsV1().Deployments(ns).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if dep.Status.AvailableReplicas != 0 {
		t.Errorf("the Deployment has %d available replicas before any readiness probe passed", dep.Status.AvailableReplicas)
	}
	// Passing the probe (through kubectl exec) makes them Ready.
	for _, p := range pods {
		in.mustKubectl(t, "-n", ns, "exec", p.Name, "--", "touch", "/www/ready")
	}
	eventually(t, time.Minute, "the Deployment to be available", func() error {
		d, err := client.AppsV1().Deployments(ns).Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.AvailableReplicas != 2 {
			return fmt.Errorf("%d of 2 replicas available", d.Status.AvailableReplicas)
		}
		return nil
	}, procs()...)
	pod := pods[0]

	t.Run("volumes, env and token", func(t *testing.T) {
		if out := in.mustKubectl(t, "-n", ns, "exec", pod.Name, "--", "cat", "/etc/web/greeting"); out != "hello" {
			t.Errorf("the ConfigMap volume holds %q, want %q", out, "hello")
		}
		if out := in.mustKubectl(t, "-n", ns, "exec", pod.Name, "--", "sh", "-c", "echo $PASSWORD"); out != "e2e\n" {
			t.Errorf("the Secret env var is %q, want %q", out, "e2e\n")
		}
		// rest.InClusterConfig in the pod finds the node's local API: the
		// kubelet sets the environment from the Service default/kubernetes
		// it reads there, and ca.crt (kube-root-ca.crt) trusts it.
		if out := in.mustKubectl(t, "-n", ns, "exec", pod.Name, "--", "sh", "-c", "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"); out != n.localAPI+"\n" {
			t.Errorf("the pod is told the API server is at %q, want the node's local API %s", out, n.localAPI)
		}
		localCA, err := os.ReadFile(filepath.Join(n.kubeletDir, "localapi", localapi.CAFile))
		if err != nil {
			t.Fatal(err)
		}
		caCrt := in.mustKubectl(t, "-n", ns, "exec", pod.Name, "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
		if !strings.Contains(caCrt, strings.TrimSpace(string(localCA))) || strings.Count(caCrt, "BEGIN CERTIFICATE") < 2 {
			t.Errorf("the pod's ca.crt does not hold both the cluster's CA and the local API's:\n%s", caCrt)
		}
		token := in.mustKubectl(t, "-n", ns, "exec", pod.Name, "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token")
		review, err := client.AuthenticationV1().TokenReviews().Create(t.Context(), &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st := review.Status
		if !st.Authenticated || st.User.Username != "system:serviceaccount:"+ns+":default" ||
			!slicesContain(st.User.Extra["authentication.kubernetes.io/pod-name"], pod.Name) {
			t.Errorf("TokenReview of the projected token: %+v, want the pod's ServiceAccount bound to pod %s", st, pod.Name)
		}
	})

	t.Run("kubectl logs -f, exec -it, port-forward", func(t *testing.T) {
		lines := in.streamKubectl(t, "-n", ns, "logs", "-f", pod.Name)
		// busybox httpd -vv logs each request it serves.
		marker := testcluster.UniqueName("marker")
		go func() {
			resp, err := http.Get(fmt.Sprintf("http://%s:%d/%s", pod.Status.PodIP, realnode.WebPort, marker))
			if err == nil {
				resp.Body.Close()
			}
		}()
		waitLine(t, lines, regexp.MustCompile(regexp.QuoteMeta(marker)), "the request in the container's log")

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
		screen := readTerminal(term)
		// busybox's ash prompts, then asks the terminal where the cursor is.
		screen.wait(t, regexp.MustCompile(`/ # (\x1b\[6n)?$`), "the shell's prompt")
		if _, err := io.WriteString(term, "test -t 0 && echo tty-$((40+2)) $(cat /proc/1/cmdline | tr '\\0' ' ')\n"); err != nil {
			t.Fatal(err)
		}
		// PID 1 of the container is the image's web server: a real one.
		screen.wait(t, regexp.MustCompile(`\ntty-42 /bin/httpd -f`), "the shell's answer from inside the container")
		_, _ = io.WriteString(term, "exit\n")

		local := freePort(t)
		pf := in.streamKubectl(t, "-n", ns, "port-forward", "pod/"+pod.Name, fmt.Sprintf("%d:%d", local, realnode.WebPort))
		waitLine(t, pf, regexp.MustCompile(`^Forwarding from 127\.0\.0\.1`), "port-forward to listen")
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", local))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != realnode.WebIndex {
			t.Errorf("through kubectl port-forward: %q, want the container's page", body)
		}
	})

	t.Run("stats through the node proxy", func(t *testing.T) {
		base := "/api/v1/nodes/" + n.name + "/proxy"
		for path, want := range map[string]string{
			"/stats/summary":    pod.Name,
			"/metrics/resource": "container_cpu_usage_seconds_total",
			"/metrics/cadvisor": "container_memory_working_set_bytes",
			"/metrics":          "kubelet_running_pods",
			"/pods":             string(pod.UID),
			"/healthz":          "ok",
		} {
			eventually(t, time.Minute, path+" through edgesync", func() error {
				out, err := in.kubectlRun(t.Context(), "get", "--raw", base+path)
				if err != nil {
					return fmt.Errorf("%v: %.300s", err, out)
				}
				if !strings.Contains(out, want) {
					return fmt.Errorf("%s does not contain %q: %.300s", path, want, out)
				}
				return nil
			}, procs()...)
		}
	})

	t.Run("local API refusals", func(t *testing.T) {
		cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(n.kubeletDir, "kubeconfig"))
		if err != nil {
			t.Fatal(err)
		}
		local, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		other := testcluster.UniqueName("other")
		if _, err := client.CoreV1().Secrets(ns).Create(t.Context(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: other},
			StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := local.CoreV1().Secrets(ns).Get(t.Context(), other, metav1.GetOptions{}); !apierrors.IsForbidden(err) && !apierrors.IsNotFound(err) {
			t.Errorf("the local API served secret %s that no pod of the node uses: %v, want 403 or 404", other, err)
		}
		if _, err := local.CoreV1().Pods(ns).Patch(t.Context(), "not-on-this-node", types.StrategicMergePatchType,
			[]byte(`{"status":{"phase":"Failed"}}`), metav1.PatchOptions{}, "status"); !apierrors.IsForbidden(err) && !apierrors.IsNotFound(err) {
			t.Errorf("the local API took a status write for a pod the node does not hold: %v, want 403 or 404", err)
		}
	})

	t.Run("crash restart", func(t *testing.T) {
		crash := realWebDeployment(n)
		crash.Name, crash.Spec.Replicas = "crash", ptr.To[int32](1)
		crash.Spec.Selector.MatchLabels = map[string]string{"app": "crash"}
		crash.Spec.Template.Labels = map[string]string{"app": "crash"}
		c := &crash.Spec.Template.Spec.Containers[0]
		c.Name, c.Command, c.ReadinessProbe = "crash", []string{"sh", "-c", "echo crashing; exit 3"}, nil
		if _, err := client.AppsV1().Deployments(ns).Create(t.Context(), crash, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var name string
		eventually(t, 2*time.Minute, "the crashing container to be restarted", func() error {
			list, err := client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=crash"})
			if err != nil {
				return err
			}
			for _, p := range list.Items {
				for _, cs := range p.Status.ContainerStatuses {
					if cs.RestartCount >= 1 && cs.LastTerminationState.Terminated != nil && cs.LastTerminationState.Terminated.ExitCode == 3 {
						name = p.Name
						return nil
					}
				}
			}
			return errors.New("no restart with exit code 3 reported yet")
		}, procs()...)
		eventually(t, time.Minute, "kubectl describe to show the back-off event", func() error {
			out, err := in.kubectlRun(t.Context(), "-n", ns, "describe", "pod", name)
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if !regexp.MustCompile(`Warning\s+BackOff\s+.*Back-off restarting failed container crash`).MatchString(out) {
				return fmt.Errorf("no BackOff event in:\n%s", out)
			}
			return nil
		}, procs()...)
		if err := client.AppsV1().Deployments(ns).Delete(t.Context(), "crash", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("offline", func(t *testing.T) {
		before, err := n.containers(t.Context(), ns)
		if err != nil {
			t.Fatal(err)
		}
		uids := map[string]types.UID{}
		for _, p := range pods {
			uids[p.Name] = p.UID
		}
		in.server.stop(t)
		// The kubelet and the agent restart while the cloud is away: the
		// agent serves the kubelet from its store.
		n.kubelet.Stop()
		n.agent.proc.stop(t)
		n.agent.start(parent)
		if err := n.kubelet.Restart(t.Context()); err != nil {
			t.Fatal(err)
		}
		// The kubelet lists the pods from the local API and keeps them.
		eventually(t, time.Minute, "the restarted kubelet to report the pods ready through the local API", func() error {
			for _, p := range pods {
				got, err := localPod(t, n, ns, p.Name)
				if err != nil {
					return err
				}
				if !podReady(got) {
					return fmt.Errorf("pod %s not ready in the local API", p.Name)
				}
			}
			return nil
		}, n.agent.proc)
		for _, p := range pods {
			resp, err := http.Get(fmt.Sprintf("http://%s:%d/", p.Status.PodIP, realnode.WebPort))
			if err != nil {
				t.Fatalf("offline, the web server of %s: %v", p.Name, err)
			}
			resp.Body.Close()
		}

		in.server = start(parent, "edgesync-server", nil, in.server.cmd.Path, in.server.cmd.Args[1:]...)
		eventually(t, 2*time.Minute, "the node Ready again with the same pods", func() error {
			if err := nodeReady(t.Context(), client, n.name, corev1.ConditionTrue); err != nil {
				return err
			}
			list, err := client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				return err
			}
			if len(list.Items) != 2 {
				return fmt.Errorf("%d web pods, want the same 2", len(list.Items))
			}
			for _, p := range list.Items {
				if uids[p.Name] != p.UID || !podReady(&p) {
					return fmt.Errorf("pod %s (uid %s) ready=%v, want the pod from before (uid %s) ready", p.Name, p.UID, podReady(&p), uids[p.Name])
				}
			}
			return nil
		}, n.agent.proc, in.server)
		after, err := n.containers(t.Context(), ns)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods {
			if len(after[p.Name]) != 1 || len(before[p.Name]) != 1 || after[p.Name][0].ID != before[p.Name][0].ID || !after[p.Name][0].Running {
				t.Errorf("pod %s: containers %+v before, %+v after; want the same container running", p.Name, before[p.Name], after[p.Name])
			}
		}
	})

	t.Run("delete", func(t *testing.T) {
		if err := client.AppsV1().Deployments(ns).Delete(t.Context(), "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Minute, "the pods' containers removed from containerd", func() error {
			ctrs, err := n.containers(t.Context(), ns)
			if err != nil {
				return err
			}
			if len(ctrs) != 0 {
				return fmt.Errorf("containerd still holds %+v", ctrs)
			}
			list, err := client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
			if err != nil {
				return err
			}
			if len(list.Items) != 0 {
				return fmt.Errorf("%d pods left in %s", len(list.Items), ns)
			}
			return nil
		}, n.agent.proc, in.server)
	})
}

// localPod reads a pod from the node's local API, as its kubelet does.
func localPod(t *testing.T, n *realNode, ns, name string) (*corev1.Pod, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(n.kubeletDir, "kubeconfig"))
	if err != nil {
		return nil, err
	}
	local, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return local.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func slicesContain(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// terminal accumulates what a pseudo-terminal shows.
type terminal struct {
	chunks chan string
	screen strings.Builder
}

func readTerminal(term *os.File) *terminal {
	tm := &terminal{chunks: make(chan string, 100)}
	go func() {
		defer close(tm.chunks)
		buf := make([]byte, 4096)
		for {
			n, err := term.Read(buf)
			if n > 0 {
				select {
				case tm.chunks <- string(buf[:n]):
				default: // the test stopped reading
				}
			}
			if err != nil {
				return
			}
		}
	}()
	return tm
}

func (tm *terminal) wait(t *testing.T, re *regexp.Regexp, what string) {
	t.Helper()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for !re.MatchString(tm.screen.String()) {
		select {
		case c, ok := <-tm.chunks:
			if !ok {
				t.Fatalf("waiting for %s: kubectl ended; the terminal showed %q", what, tm.screen.String())
			}
			tm.screen.WriteString(c)
		case <-timer.C:
			t.Fatalf("waiting for %s: the terminal showed %q", what, tm.screen.String())
		}
	}
}
