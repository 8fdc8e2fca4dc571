package localapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/internal/cloudtest"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

var widgets = schema.GroupVersionResource{Group: "localapi.edgesync.test", Version: "v1", Resource: "widgets"}

// TestEndToEndInClusterProgram runs an unchanged client-go program (built
// here from internal/edgeapp, using rest.InClusterConfig) as an edge pod's
// ServiceAccount, with what the kubelet gives a pod: the environment it
// derives from the Service default/kubernetes it reads through the local
// API, and the token and ca.crt it mounts (a TokenRequest through the
// local API, the kube-root-ca.crt ConfigMap it serves). The program lists
// and watches Deployments and a custom resource through the local API and
// sees their changes; another node's application (its own pod, on the
// same cloud) cannot read what this node subscribed to, nor use this
// node's pod's token, and that node holds none of it; a ServiceAccount no
// pod of the node runs as is refused; offline, the program started again lists from the store and
// its write gets 503; back online its watch follows without a relist, and
// the cloud sends the node only what changed; revoking its RBAC ends its
// watch, then 403, and granting it again serves it again.
//
// The program runs in a chroot holding only itself and the pod's files,
// as in a container (this needs root, like the real node's tests).
func TestEndToEndInClusterProgram(t *testing.T) {
	if os.Geteuid() != 0 {
		repo.Missing(t, "root", "the program runs chrooted in the pod's files, as in a container; run `make test` as root")
	}
	outer := t
	program := buildEdgeApp(t)
	// Two nodes of one cloud, their pods in one namespace.
	env := cloudtest.Start(t)
	ns := testcluster.Namespace(t, testcluster.Client(t))
	n, neighbour := startLiveNodeOn(t, env, ns), startLiveNodeOn(t, env, ns)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	n.register(t, ctx)
	neighbour.register(t, ctx)
	dyn, err := dynamic.NewForConfig(testcluster.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ensureWidgets(ctx, t, dyn)

	// The application: ServiceAccount "watcher" may read and scale
	// Deployments and read Widgets; a pod of the node runs as it.
	for _, sa := range []string{"watcher", "stranger", "neighbour"} {
		if _, err := n.kube.CoreV1().ServiceAccounts(n.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	role := func(name string, rule rbacv1.PolicyRule) {
		t.Helper()
		if _, err := n.kube.RbacV1().Roles(n.ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: []rbacv1.PolicyRule{rule}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	bindTo := func(sa, name string) {
		t.Helper()
		if _, err := n.kube.RbacV1().RoleBindings(n.ns).Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-" + sa},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: n.ns}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	bind := func(name string) { t.Helper(); bindTo("watcher", name) }
	role("deployments", rbacv1.PolicyRule{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "list", "watch", "patch"}})
	role("widgets", rbacv1.PolicyRule{APIGroups: []string{widgets.Group}, Resources: []string{widgets.Resource}, Verbs: []string{"get", "list", "watch"}})
	bind("deployments")
	bind("widgets")
	bindTo("neighbour", "deployments") // the other node's application reads Deployments only
	// Created through the API server: ServiceAccount admission gives it
	// the projected volume every pod gets (token, kube-root-ca.crt,
	// namespace).
	pod, err := n.kube.CoreV1().Pods(n.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "watcher"},
		Spec: corev1.PodSpec{NodeName: n.node, ServiceAccountName: "watcher",
			Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	neighbourPod, err := n.kube.CoreV1().Pods(n.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "neighbour"},
		Spec: corev1.PodSpec{NodeName: neighbour.node, ServiceAccountName: "neighbour",
			Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	createDeployment(ctx, t, n, "web")
	for i := 1; i <= 4; i++ {
		createWidget(ctx, t, dyn, n.ns, fmt.Sprintf("w%d", i), "blue")
	}

	pf := podFiles(ctx, t, n, pod)
	if !strings.Contains(pf.ca, strings.TrimSpace(string(mustRead(t, n.caFile)))) {
		t.Fatal("the ca.crt the kubelet mounts does not hold the local API's CA")
	}

	watcher := pf.start(t, program, "watch", "apps/v1/deployments", widgets.Group+"/v1/"+widgets.Resource)
	watcher.want(t, "the Deployments listed", func(l appLine) bool {
		return l.Op == "list" && l.Resource == "deployments" && l.Objects["web"] == "1"
	})
	watcher.want(t, "the Widgets listed", func(l appLine) bool {
		return l.Op == "list" && l.Resource == widgets.Resource && len(l.Objects) == 4
	})

	t.Run("the program sees changes", func(t *testing.T) {
		if _, err := n.kube.AppsV1().Deployments(n.ns).Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":2}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		watcher.want(t, "the scaled Deployment", func(l appLine) bool {
			return l.Op == "event" && l.Type == "MODIFIED" && l.Name == "web" && l.Summary == "2"
		})
		patchWidget(ctx, t, dyn, n.ns, "w1", "green")
		watcher.want(t, "the patched Widget", func(l appLine) bool {
			return l.Op == "event" && l.Type == "MODIFIED" && l.Name == "w1" && l.Summary == "green"
		})
	})

	t.Run("another node's application never sees what only this node subscribed to", func(t *testing.T) {
		other := podFiles(ctx, t, neighbour, neighbourPod)
		if lines := other.run(t, program, "list", "apps/v1/deployments"); len(lines) != 1 || lines[0].Objects["web"] == "" {
			t.Fatalf("the other node's application lists Deployments: %+v", lines)
		}
		lines := other.run(t, program, "list", widgets.Group+"/v1/"+widgets.Resource)
		if len(lines) != 1 || lines[0].Code != http.StatusForbidden {
			t.Errorf("the other node's application lists the Widgets this node subscribed to: %+v, want 403", lines)
		}
		// With this node's pod's token, the other node's local API
		// knows no such application.
		stolen := other
		stolen.token = pf.token
		if lines := stolen.run(t, program, "list", widgets.Group+"/v1/"+widgets.Resource); len(lines) != 1 || lines[0].Code != http.StatusUnauthorized {
			t.Errorf("this node's pod's token at the other node: %+v, want 401", lines)
		}
		held, err := neighbour.client.Resources(widgets.Group, widgets.Version, widgets.Resource, "")
		if err != nil || len(held) != 0 {
			t.Errorf("the other node holds %d Widgets (%v), want none", len(held), err)
		}
	})

	t.Run("a ServiceAccount no pod of the node runs as is refused", func(t *testing.T) {
		// A valid token of the cluster, which the node was never given.
		tr, err := n.kube.CoreV1().ServiceAccounts(n.ns).CreateToken(ctx, "stranger", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		stranger := pf
		stranger.token = tr.Status.Token
		lines := stranger.run(t, program, "list", "apps/v1/deployments")
		if len(lines) != 1 || lines[0].Op != "error" || lines[0].Code != http.StatusUnauthorized {
			t.Errorf("the program as ServiceAccount %q: %+v, want 401", "stranger", lines)
		}
	})

	t.Run("offline: reads from the store, writes 503, then the watch follows without a relist", func(t *testing.T) {
		// Nothing but the test changes the Deployment from now on.
		waitDeploymentSettled(ctx, t, n, "web")
		n.link.cut()
		if _, err := n.client.WaitFor(ctx, func(s edgeclient.State) bool { return !s.Connected }); err != nil {
			t.Fatal(err)
		}
		patchWidget(ctx, t, dyn, n.ns, "w2", "red") // while the node is away
		watcher.stop(t)
		watcher = pf.start(outer, program, "watch", "apps/v1/deployments", widgets.Group+"/v1/"+widgets.Resource)
		watcher.want(t, "the Deployments listed offline", func(l appLine) bool {
			return l.Op == "list" && l.Resource == "deployments" && l.Objects["web"] == "2"
		})
		watcher.want(t, "the Widgets listed offline", func(l appLine) bool {
			return l.Op == "list" && l.Resource == widgets.Resource && len(l.Objects) == 4 && l.Objects["w1"] == "green" && l.Objects["w2"] == "blue"
		})
		lines := pf.run(t, program, "scale", "web", "3")
		if len(lines) != 1 || lines[0].Code != http.StatusServiceUnavailable || !strings.Contains(lines[0].Message, "offline") {
			t.Errorf("a write offline: %+v, want 503 saying the node is offline", lines)
		}

		before := sentResources(t, n)
		n.link.restore(t)
		watcher.want(t, "the change made while the node was away, on the same watch", func(l appLine) bool {
			return l.Op == "event" && l.Type == "MODIFIED" && l.Name == "w2" && l.Summary == "red"
		})
		if relists := watcher.count(func(l appLine) bool { return l.Op == "list" }); relists != 2 {
			t.Errorf("the program listed %d times, want 2 (once per resource at its start): its watch should have followed", relists)
		}
		// The node holds the Deployment and 4 Widgets: a relist from the
		// cloud would send 5.
		if sent := sentResources(t, n) - before; sent < 1 || sent > 2 {
			t.Errorf("back online the cloud sent %v objects of subscribed resources, want 1 (the Widget that changed), 2 at most", sent)
		}
	})

	t.Run("revoking RBAC ends the watch with 403; granting it again serves it again", func(t *testing.T) {
		if err := n.kube.RbacV1().RoleBindings(n.ns).Delete(ctx, "widgets-watcher", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		watcher.want(t, "the Widgets watch ended with 403", func(l appLine) bool {
			return l.Op == "ended" && l.Resource == widgets.Resource && l.Code == http.StatusForbidden
		})
		bind("widgets")
		// The cloud decides the refused subscription again on the RBAC
		// change (and once more when the API server's authorizer has
		// surely seen it).
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		var lines []appLine
		eventually(t, wctx, "the Widgets served again after the RoleBinding is back", func() (bool, error) {
			lines = pf.run(t, program, "list", widgets.Group+"/v1/"+widgets.Resource)
			return len(lines) == 1 && lines[0].Op == "list" && len(lines[0].Objects) == 4, nil
		})
	})
}

// buildEdgeApp builds internal/edgeapp, statically (it runs in a chroot).
func buildEdgeApp(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "edgeapp")
	cmd := exec.Command("go", "build", "-o", out, "./internal/edgeapp")
	cmd.Dir = repo.Root(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build internal/edgeapp: %v\n%s", err, b)
	}
	return out
}

// podView is what the kubelet gives a pod for rest.InClusterConfig.
type podView struct {
	host, port, token, ca, namespace string
}

// podFiles asks the local API what the kubelet asks it, with the kubelet's
// credentials: the Service default/kubernetes (the environment), a
// TokenRequest bound to the pod, and the kube-root-ca.crt the pod's
// projected volume names.
func podFiles(ctx context.Context, t *testing.T, n *liveNode, pod *corev1.Pod) podView {
	t.Helper()
	svc, err := n.json.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the kubelet reads Service default/kubernetes: %v", err)
	}
	if len(svc.Spec.Ports) != 1 || "https://"+net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(svc.Spec.Ports[0].Port))) != n.addr {
		t.Fatalf("Service default/kubernetes tells pods %s %v, want the local API at %s", svc.Spec.ClusterIP, svc.Spec.Ports, n.addr)
	}
	v := podView{host: svc.Spec.ClusterIP, port: strconv.Itoa(int(svc.Spec.Ports[0].Port)), namespace: pod.Namespace}
	projected := ""
	for _, vol := range pod.Spec.Volumes {
		if vol.Projected == nil {
			continue
		}
		for _, src := range vol.Projected.Sources {
			if src.ConfigMap != nil {
				projected = src.ConfigMap.Name
			}
		}
	}
	if projected != "kube-root-ca.crt" {
		t.Fatalf("the pod's projected volume names ConfigMap %q, want kube-root-ca.crt (ServiceAccount admission)", projected)
	}
	eventually(t, ctx, "the kubelet's TokenRequest and kube-root-ca.crt", func() (bool, error) {
		tr, err := n.json.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3607),
				BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
		}, metav1.CreateOptions{})
		if apierrors.IsServiceUnavailable(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		cm, err := n.json.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, projected, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		v.token, v.ca = tr.Status.Token, cm.Data["ca.crt"]
		return true, nil
	})
	return v
}

// root writes the pod's files into a new directory with the program: the
// chroot the program runs in.
func (v podView) root(t *testing.T, program string) string {
	t.Helper()
	root := t.TempDir()
	sa := filepath.Join(root, "var/run/secrets/kubernetes.io/serviceaccount")
	if err := os.MkdirAll(sa, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"token": v.token, "ca.crt": v.ca, "namespace": v.namespace} {
		if err := os.WriteFile(filepath.Join(sa, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "edgeapp"), mustRead(t, program), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func (v podView) command(t *testing.T, program string, args ...string) *exec.Cmd {
	cmd := exec.Command("/edgeapp", args...)
	cmd.Env = []string{"KUBERNETES_SERVICE_HOST=" + v.host, "KUBERNETES_SERVICE_PORT=" + v.port}
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: v.root(t, program)}
	cmd.Dir = "/"
	return cmd
}

// run runs the program to its end and returns what it printed.
func (v podView) run(t *testing.T, program string, args ...string) []appLine {
	t.Helper()
	cmd := v.command(t, program, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run edgeapp %v: %v", args, err)
	}
	var lines []appLine
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var al appLine
		if json.Unmarshal([]byte(l), &al) == nil {
			lines = append(lines, al)
		}
	}
	return lines
}

// start starts the program and reads what it prints until it is stopped.
func (v podView) start(t *testing.T, program string, args ...string) *runningApp {
	t.Helper()
	cmd := v.command(t, program, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &runningApp{cmd: cmd, read: make(chan struct{}), changed: make(chan struct{})}
	go func() {
		defer close(a.read)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l appLine
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				a.mu.Lock()
				a.seen = append(a.seen, l)
				close(a.changed)
				a.changed = make(chan struct{})
				a.mu.Unlock()
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() { a.stop(t) })
	return a
}

// appLine is a line edgeapp prints.
type appLine struct {
	Op       string            `json:"op"`
	Resource string            `json:"resource"`
	Type     string            `json:"type"`
	Name     string            `json:"name"`
	Objects  map[string]string `json:"objects"`
	Summary  string            `json:"summary"`
	Code     int32             `json:"code"`
	Message  string            `json:"message"`
}

type runningApp struct {
	cmd      *exec.Cmd
	read     chan struct{} // closed once its output is read to the end
	stopOnce sync.Once
	mu       sync.Mutex // guards seen and changed
	seen     []appLine
	changed  chan struct{} // closed and replaced on every line
}

// want waits until the program has printed a line that cond accepts.
func (a *runningApp) want(t *testing.T, what string, cond func(appLine) bool) {
	t.Helper()
	timeout := time.NewTimer(45 * time.Second)
	defer timeout.Stop()
	for {
		a.mu.Lock()
		changed, seen := a.changed, a.seen
		a.mu.Unlock()
		if slices.ContainsFunc(seen, cond) {
			return
		}
		select {
		case <-changed:
		case <-a.read:
			a.mu.Lock()
			seen = a.seen
			a.mu.Unlock()
			if slices.ContainsFunc(seen, cond) {
				return
			}
			t.Fatalf("the program ended waiting for %s; it printed %+v", what, seen)
		case <-timeout.C:
			t.Fatalf("the program did not print %s; it printed %+v", what, seen)
		}
	}
}

// count counts the lines printed so far that cond accepts.
func (a *runningApp) count(cond func(appLine) bool) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, l := range a.seen {
		if cond(l) {
			n++
		}
	}
	return n
}

func (a *runningApp) stop(t *testing.T) {
	a.stopOnce.Do(func() {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		<-a.read
		_ = a.cmd.Wait()
	})
}

// sentResources is the sync server's count of subscribed objects sent to
// nodes (edgesync_messages_sent_total{kind="resource"}).
func sentResources(t *testing.T, n *liveNode) float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.env.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "edgesync_messages_sent_total{") && strings.Contains(line, `kind="resource"`) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return 0
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func createDeployment(ctx context.Context, t *testing.T, n *liveNode, name string) {
	t.Helper()
	labels := map[string]string{"app": name}
	if _, err := n.kube.AppsV1().Deployments(n.ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
				NodeSelector: map[string]string{"edgesync.test/nowhere": "true"},
				Containers:   []corev1.Container{{Name: name, Image: "registry.k8s.io/pause:3.10"}},
			}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitDeploymentSettled waits until the Deployment controller is done
// with the Deployment: nothing but the test changes it afterwards.
func waitDeploymentSettled(ctx context.Context, t *testing.T, n *liveNode, name string) {
	t.Helper()
	eventually(t, ctx, "the Deployment controller done with "+name, func() (bool, error) {
		d, err := n.kube.AppsV1().Deployments(n.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return d.Status.ObservedGeneration == d.Generation && d.Status.Replicas == *d.Spec.Replicas, nil
	})
}

// ensureWidgets installs the Widget CRD, and lets the sync server list
// and watch Widgets as an operator would (deploy/rbac).
func ensureWidgets(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	t.Helper()
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": widgets.Resource + "." + widgets.Group},
		"spec": map[string]any{
			"group": widgets.Group, "scope": "Namespaced",
			"names": map[string]any{"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
			"versions": []any{map[string]any{
				"name": "v1", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
			}},
		},
	}}
	if _, err := dyn.Resource(crds).Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	eventually(t, ctx, "the Widget CRD served", func() (bool, error) {
		_, err := dyn.Resource(widgets).List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	})
}

func createWidget(ctx context.Context, t *testing.T, dyn dynamic.Interface, ns, name, color string) {
	t.Helper()
	w := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": widgets.GroupVersion().String(), "kind": "Widget",
		"metadata": map[string]any{"name": name}, "spec": map[string]any{"color": color},
	}}
	if _, err := dyn.Resource(widgets).Namespace(ns).Create(ctx, w, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func patchWidget(ctx context.Context, t *testing.T, dyn dynamic.Interface, ns, name, color string) {
	t.Helper()
	if _, err := dyn.Resource(widgets).Namespace(ns).Patch(ctx, name, types.MergePatchType,
		fmt.Appendf(nil, `{"spec":{"color":%q}}`, color), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// link forwards the node's connections to the sync server; cut drops them
// and refuses new ones (the node is offline), restore serves again on the
// same address.
type link struct {
	addr, target string
	mu           sync.Mutex // guards ln and conns
	ln           net.Listener
	conns        map[net.Conn]struct{}
	wg           sync.WaitGroup
}

func newLink(t *testing.T, target string) *link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	l.serve(ln)
	t.Cleanup(func() {
		l.cut()
		l.wg.Wait()
	})
	return l
}

func (l *link) serve(ln net.Listener) {
	l.mu.Lock()
	l.ln = ln
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", l.target)
			if err != nil {
				c.Close()
				continue
			}
			l.mu.Lock()
			l.conns[c], l.conns[up] = struct{}{}, struct{}{}
			l.mu.Unlock()
			for _, p := range [][2]net.Conn{{c, up}, {up, c}} {
				l.wg.Add(1)
				go func() {
					defer l.wg.Done()
					_, _ = io.Copy(p[0], p[1])
					p[0].Close()
					p[1].Close()
				}()
			}
		}
	}()
}

func (l *link) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		l.ln.Close()
		l.ln = nil
	}
	for c := range l.conns {
		c.Close()
		delete(l.conns, c)
	}
}

func (l *link) restore(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", l.addr, err)
	}
	l.serve(ln)
}
