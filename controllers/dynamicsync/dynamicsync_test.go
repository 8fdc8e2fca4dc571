package dynamicsync_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/backoff"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, repo.ClientGoLeakOptions()...)
}

var (
	deployments = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	widgets     = schema.GroupVersionResource{Group: "dynamicsync.edgesync.test", Version: "v1", Resource: "widgets"}
)

// TestSubscriptionsEndToEnd runs the cloud side for real (the devcluster's
// kube-apiserver, the controllers as the server's ServiceAccount bound by
// deploy/rbac, the sync server with mTLS) and two edges on edgeclient.
func TestSubscriptionsEndToEnd(t *testing.T) {
	outer := t
	admin := testcluster.RESTConfig(t)
	kube := testcluster.Client(t)
	dyn, err := dynamic.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	testcluster.ApplyRBAC(t, admin, repo.Root(t))
	ensureWidgetCRD(t, dyn)
	ns := testcluster.Namespace(t, kube)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	// The application's ServiceAccount may list and watch Deployments and
	// Widgets in its namespace.
	reader := createServiceAccount(ctx, t, kube, ns, "reader")
	createServiceAccount(ctx, t, kube, ns, "stranger")
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "read-apps"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{widgets.Group}, Resources: []string{"widgets"}, Verbs: []string{"get", "list", "watch"}},
	}}
	if _, err := kube.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "reader-reads-apps"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "read-apps"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: reader, Namespace: ns}},
	}
	if _, err := kube.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// An administrator lets the server read the custom resource, as
	// deploy/rbac says.
	grantServer := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "edgesync-server-subscriptions-widgets"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{widgets.Group}, Resources: []string{"widgets"}, Verbs: []string{"list", "watch"}},
	}}
	if _, err := kube.RbacV1().ClusterRoles().Create(ctx, grantServer, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: grantServer.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: grantServer.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "edgesync-server", Namespace: "edgesync-system"}},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	ctrls, err := controllers.New(controllers.Config{
		RESTConfig: testcluster.AsServer(admin), DisableDevices: true, Registerer: reg,
		Subscriptions: controllers.SubscriptionsConfig{IdleTimeout: -1},
		Logger:        zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
	})
	if err != nil {
		t.Fatal(err)
	}
	serverMetrics := prometheus.NewRegistry()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.Registerer, o.Gatherer = serverMetrics, serverMetrics })
	runCtx, stopCtrls := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrls.Run(runCtx, env.Server) }()
	t.Cleanup(func() {
		stopCtrls()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("controllers: %v", err)
		}
	})

	nodeA, nodeB := edgeNodeName(t, kube, "dyn-a"), edgeNodeName(t, kube, "dyn-b")
	storeA := t.TempDir()
	a := startEdge(t, env, nodeA, storeA)
	b := startEdge(t, env, nodeB, t.TempDir())
	register(ctx, t, a.Client)
	register(ctx, t, b.Client)
	// A pod of each node runs as the reader.
	runPod(ctx, t, kube, ns, "app-a", nodeA, reader)
	runPod(ctx, t, kube, ns, "app-b", nodeB, reader)

	createDeployment(ctx, t, kube, ns, "web")
	createWidget(ctx, t, dyn, ns, "w1", "blue", nil)
	createWidget(ctx, t, dyn, ns, "w2", "blue", map[string]any{"shared": "true"})

	subDeploy := &edgesyncv1.Subscription{ServiceAccountNamespace: ns, ServiceAccountName: reader, Group: "apps", Version: "v1", Resource: "deployments", Namespace: ns}
	subWidgets := &edgesyncv1.Subscription{ServiceAccountNamespace: ns, ServiceAccountName: reader, Group: widgets.Group, Version: "v1", Resource: "widgets", Namespace: ns}
	idDeployA := subscribe(ctx, t, a.Client, subDeploy)
	subscribe(ctx, t, a.Client, subWidgets)

	t.Run("objects and their changes reach the edge", func(t *testing.T) {
		waitResource(ctx, t, a.Client, deployments, ns, "web", func(o map[string]any) bool { return o["kind"] == "Deployment" })
		waitResource(ctx, t, a.Client, widgets, ns, "w1", func(o map[string]any) bool { return spec(o, "color") == "blue" })
		patchWidget(ctx, t, dyn, ns, "w1", "green")
		waitResource(ctx, t, a.Client, widgets, ns, "w1", func(o map[string]any) bool { return spec(o, "color") == "green" })
		scaleDeployment(ctx, t, kube, ns, "web", 3)
		waitResource(ctx, t, a.Client, deployments, ns, "web", func(o map[string]any) bool { return spec(o, "replicas") == "3" })
	})

	t.Run("two nodes share one informer and one encoding per version", func(t *testing.T) {
		subscribe(ctx, t, b.Client, subDeploy)
		// Node B subscribes only to the Widgets labelled shared=true.
		subscribe(ctx, t, b.Client, &edgesyncv1.Subscription{ServiceAccountNamespace: ns, ServiceAccountName: reader,
			Group: widgets.Group, Version: "v1", Resource: "widgets", Namespace: ns, LabelSelector: "shared=true"})
		waitResource(ctx, t, b.Client, deployments, ns, "web", func(map[string]any) bool { return true })
		waitResource(ctx, t, b.Client, widgets, ns, "w2", func(map[string]any) bool { return true })
		waitResource(ctx, t, a.Client, widgets, ns, "w2", func(map[string]any) bool { return true })
		if got := gauge(t, reg, "edgesync_dynamic_informers"); got != 2 {
			t.Errorf("edgesync_dynamic_informers = %v, want 2 (deployments and widgets, however many nodes)", got)
		}
		// A Widget has no controller: one write is one version, encoded
		// once for both nodes.
		encodes := func() float64 {
			return metricWith(t, reg, "edgesync_dynamic_encodes_total", "resource", widgets.GroupResource().String())
		}
		before := encodes()
		patchWidget(ctx, t, dyn, ns, "w2", "yellow")
		waitResource(ctx, t, a.Client, widgets, ns, "w2", func(o map[string]any) bool { return spec(o, "color") == "yellow" })
		waitResource(ctx, t, b.Client, widgets, ns, "w2", func(o map[string]any) bool { return spec(o, "color") == "yellow" })
		if n := encodes() - before; n != 1 {
			t.Errorf("one new version sent to two nodes was encoded %v times, want once", n)
		}
	})

	t.Run("another node never sees what only this node subscribed to", func(t *testing.T) {
		if _, ok, _ := b.Get(edgeclient.ResourceKey(widgets.Group, widgets.Version, widgets.Resource, ns, "w1")); ok {
			t.Error("node B holds Widget w1, which only node A's subscription covers")
		}
		objs, err := b.Resources(widgets.Group, widgets.Version, widgets.Resource, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != 1 {
			t.Errorf("node B holds %d widgets, want only the shared one", len(objs))
		}
	})

	t.Run("a ServiceAccount no pod of the node runs as is refused", func(t *testing.T) {
		id, err := a.Subscribe(&edgesyncv1.Subscription{ServiceAccountNamespace: ns, ServiceAccountName: "stranger", Group: "apps", Version: "v1", Resource: "deployments", Namespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		err = a.WaitSubscription(ctx, id)
		if status.Code(errors.Unwrap(err)) != codes.PermissionDenied && !strings.Contains(fmt.Sprint(err), "PermissionDenied") {
			t.Fatalf("subscribing as a ServiceAccount no pod of the node runs as: %v, want PERMISSION_DENIED", err)
		}
		if !strings.Contains(err.Error(), "no pod bound to node") {
			t.Errorf("the refusal does not say why: %v", err)
		}
		_ = a.Unsubscribe(id)
	})

	t.Run("resume after a disconnect sends only the difference", func(t *testing.T) {
		// The Deployment controller is done with the Deployment: nothing
		// but the test changes what the nodes hold from now on.
		waitDeploymentObserved(ctx, t, kube, ns, "web")
		a.stop(t)
		a.Close()
		patchWidget(ctx, t, dyn, ns, "w1", "red")
		sent := func() float64 {
			return metricWith(t, serverMetrics, "edgesync_messages_sent_total", "kind", "resource")
		}
		before := sent()
		a = startEdge(outer, env, nodeA, storeA) // runs on into the next subtests
		waitResource(ctx, t, a.Client, widgets, ns, "w1", func(o map[string]any) bool { return spec(o, "color") == "red" })
		// A change after the reconnect follows whatever the resumed
		// subscriptions sent (the keyed queue is first in, first out).
		patchWidget(ctx, t, dyn, ns, "w1", "purple")
		waitResource(ctx, t, a.Client, widgets, ns, "w1", func(o map[string]any) bool { return spec(o, "color") == "purple" })
		// The subscriptions came back from the store; the Deployment and
		// Widget w2, unchanged, were not sent again.
		// Node A holds three objects (the Deployment, w1, w2): sending them
		// all again would count 4 with the change after the reconnect. The
		// difference counts 2, or 3 when the server still sent w1's change
		// to the session it had not yet seen end (unacknowledged, so sent
		// again on the new one).
		if n := sent() - before; n < 2 || n > 3 {
			t.Errorf("after reconnecting the server sent %v objects of subscribed resources, want 2 (the widget changed while the node was away, then again), 3 at most", n)
		}
	})

	t.Run("revoking RBAC ends the subscription with PERMISSION_DENIED", func(t *testing.T) {
		if err := kube.RbacV1().RoleBindings(ns).Delete(ctx, binding.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		if _, err := a.WaitFor(wctx, func(edgeclient.State) bool {
			st, _ := a.SubscriptionState(idDeployA)
			return st.GetState() == edgesyncv1.SubscriptionState_SUBSCRIPTION_STATE_ENDED
		}); err != nil {
			t.Fatalf("the subscription did not end after its RoleBinding was deleted: %v", err)
		}
		st, _ := a.SubscriptionState(idDeployA)
		if codes.Code(st.GetCode()) != codes.PermissionDenied || !strings.Contains(st.GetMessage(), "may not list and watch") {
			t.Errorf("ended with %v %q, want PERMISSION_DENIED saying what is not allowed", codes.Code(st.GetCode()), st.GetMessage())
		}
		if _, err := a.WaitFor(wctx, func(edgeclient.State) bool {
			objs, _ := a.Resources("apps", "v1", "deployments", ns)
			return len(objs) == 0
		}); err != nil {
			t.Errorf("the Deployments stayed on the node after the subscription ended")
		}
	})
}

type edge struct {
	*edgeclient.Client
	cancel context.CancelFunc
	done   chan error
}

func startEdge(t *testing.T, env *servertest.Env, node, dir string) *edge {
	return startEdgeWith(t, env, node, dir, nil)
}

func startEdgeWith(t *testing.T, env *servertest.Env, node, dir string, on func(context.Context, edgeclient.Event) error) *edge {
	t.Helper()
	certFile, keyFile := env.NodeCert(t, node)
	c, err := edgeclient.New(edgeclient.Config{
		Server: env.Addr, CAFile: env.CAFile, CertFile: certFile, KeyFile: keyFile, NodeName: node,
		StoreDir: dir, AgentVersion: "dynamicsync-test", OnEvent: on,
		Logger:  zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Backoff: backoff.Config{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &edge{Client: c, cancel: cancel, done: make(chan error, 1)}
	go func() { e.done <- c.Run(ctx) }()
	t.Cleanup(func() {
		e.stop(t)
		c.Close()
	})
	return e
}

func (e *edge) stop(t *testing.T) {
	if e.cancel == nil {
		return
	}
	e.cancel()
	if err := <-e.done; err != nil {
		t.Errorf("Run: %v", err)
	}
	e.cancel = nil
}

func register(ctx context.Context, t *testing.T, c *edgeclient.Client) {
	t.Helper()
	r, err := c.RegisterNode(edgeclient.NodeRegistration{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(ctx); err != nil {
		t.Fatalf("register: %v", err)
	}
}

func subscribe(ctx context.Context, t *testing.T, c *edgeclient.Client, sub *edgesyncv1.Subscription) string {
	t.Helper()
	id, err := c.Subscribe(sub)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitSubscription(ctx, id); err != nil {
		t.Fatalf("subscribe to %s: %v", sub.GetResource(), err)
	}
	return id
}

func waitResource(ctx context.Context, t *testing.T, c *edgeclient.Client, gvr schema.GroupVersionResource, ns, name string, cond func(map[string]any) bool) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	key := edgeclient.ResourceKey(gvr.Group, gvr.Version, gvr.Resource, ns, name)
	if _, err := c.WaitFor(wctx, func(edgeclient.State) bool {
		o, ok, _ := c.Get(key)
		if !ok {
			return false
		}
		var obj map[string]any
		return json.Unmarshal(o.Resource.GetObject(), &obj) == nil && cond(obj)
	}); err != nil {
		t.Fatalf("waiting for %s at the edge: %v", key, err)
	}
}

// spec returns spec.field of obj as text.
func spec(obj map[string]any, field string) string {
	s, _ := obj["spec"].(map[string]any)
	if v, ok := s[field]; ok {
		return fmt.Sprint(v)
	}
	return ""
}

func edgeNodeName(t *testing.T, kube kubernetes.Interface, prefix string) string {
	t.Helper()
	node := testcluster.UniqueName(prefix)
	t.Cleanup(func() { _ = kube.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}) })
	return node
}

func createServiceAccount(ctx context.Context, t *testing.T, kube kubernetes.Interface, ns, name string) string {
	t.Helper()
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// runPod binds a pod running as sa to node, as the scheduler would.
func runPod(ctx context.Context, t *testing.T, kube kubernetes.Interface, ns, name, node, sa string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "edgesync.test/app:1"}},
		},
	}
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createDeployment(ctx context.Context, t *testing.T, kube kubernetes.Interface, ns, name string) {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				// Placed on no node: this test is about the Deployment.
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{"edgesync.test/nowhere": "true"},
					Containers:   []corev1.Container{{Name: "web", Image: "edgesync.test/web:1"}},
				},
			},
		},
	}
	if _, err := kube.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func scaleDeployment(ctx context.Context, t *testing.T, kube kubernetes.Interface, ns, name string, replicas int) {
	t.Helper()
	if _, err := kube.AppsV1().Deployments(ns).Patch(ctx, name, types.MergePatchType,
		fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, replicas), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ensureWidgetCRD installs the Widget CRD (namespaced, any spec) once per
// cluster and waits until it is served.
func ensureWidgetCRD(t *testing.T, dyn dynamic.Interface) {
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
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"type": "object", "x-kubernetes-preserve-unknown-fields": true,
				}},
			}},
		},
	}}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := dyn.Resource(crds).Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := dyn.Resource(widgets).List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("the Widget CRD is not served: %v", err)
	}
}

func createWidget(ctx context.Context, t *testing.T, dyn dynamic.Interface, ns, name, color string, labels map[string]any) {
	t.Helper()
	w := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": widgets.GroupVersion().String(), "kind": "Widget",
		"metadata": map[string]any{"name": name, "labels": labels},
		"spec":     map[string]any{"color": color},
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

func waitDeploymentObserved(ctx context.Context, t *testing.T, kube kubernetes.Interface, ns, name string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && d.Status.ObservedGeneration == d.Generation && d.Status.Replicas == *d.Spec.Replicas, nil
	}); err != nil {
		t.Fatalf("the Deployment controller did not catch up with %s: %v", name, err)
	}
}

// metricWith returns the value of the series of name whose label is value.
func metricWith(t *testing.T, g prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

func gauge(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	return metric(t, g, name, func(m *dto.Metric) float64 { return m.GetGauge().GetValue() })
}

func counter(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	return metric(t, g, name, func(m *dto.Metric) float64 { return m.GetCounter().GetValue() })
}

func metric(t *testing.T, g prometheus.Gatherer, name string, value func(*dto.Metric) float64) float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			sum := 0.0
			for _, m := range f.GetMetric() {
				sum += value(m)
			}
			return sum
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
