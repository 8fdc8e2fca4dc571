package localapi_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// TestEndToEndApplicationsReadThroughTheirEdge runs a client-go program's
// calls as an edge pod's ServiceAccount against the node's local API, with
// the token the pod mounts (as rest.InClusterConfig reads it): it lists
// and watches Deployments through the node's subscription, sees changes,
// writes through the cloud, loses a resource when its RBAC is revoked
// (the watch ends, the next list is 403), is refused with a token the node
// was not given, and keeps reading offline while its writes get 503.
func TestEndToEndApplicationsReadThroughTheirEdge(t *testing.T) {
	n := startLiveNode(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	n.register(t, ctx)

	// The application: ServiceAccount "monitor", which may read and patch
	// Deployments and read ConfigMaps, and a pod of the node running as it.
	if _, err := n.kube.CoreV1().ServiceAccounts(n.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "monitor"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	grant := func(name string, rule rbacv1.PolicyRule) {
		t.Helper()
		if _, err := n.kube.RbacV1().Roles(n.ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: []rbacv1.PolicyRule{rule}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := n.kube.RbacV1().RoleBindings(n.ns).Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "monitor", Namespace: n.ns}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	grant("deployments", rbacv1.PolicyRule{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "list", "watch", "patch"}})
	grant("configmaps", rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch"}})
	if _, err := n.kube.CoreV1().Pods(n.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "monitor"},
		Spec: corev1.PodSpec{NodeName: n.node, ServiceAccountName: "monitor",
			Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "web"}
	if _, err := n.kube.AppsV1().Deployments(n.ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
				NodeSelector: map[string]string{"edgesync.test/nowhere": "true"},
				Containers:   []corev1.Container{{Name: "web", Image: "registry.k8s.io/pause:3.10"}},
			}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The token the kubelet mounts for the pod, as the cloud pushed it.
	var token string
	eventually(t, ctx, "the pod's ServiceAccount token at the edge", func() (bool, error) {
		toks, err := n.client.List(edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN)
		for _, o := range toks {
			if o.Token.GetPodName() == "monitor" && o.Token.GetToken() != "" {
				token = o.Token.GetToken()
			}
		}
		return token != "", err
	})
	app := n.appClient(t, token)

	list, err := app.AppsV1().Deployments(n.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("the application lists Deployments through its edge: %v", err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != "web" {
		t.Fatalf("the application listed %v, want Deployment web", list.Items)
	}
	w, err := app.AppsV1().Deployments(n.ns).Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	// A write goes to the API server as the application; the change comes
	// back through the watch.
	patched, err := app.AppsV1().Deployments(n.ns).Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":2}}`), metav1.PatchOptions{})
	if err != nil || *patched.Spec.Replicas != 2 {
		t.Fatalf("the application's patch through its edge: %v, %v", patched, err)
	}
	waitEvent(ctx, t, w, "the scaled Deployment on the application's watch", func(ev watch.Event) bool {
		d, ok := ev.Object.(*appsv1.Deployment)
		return ev.Type == watch.Modified && ok && *d.Spec.Replicas == 2
	})

	t.Run("a token the node was not given is refused", func(t *testing.T) {
		tr, err := n.kube.CoreV1().ServiceAccounts(n.ns).CreateToken(ctx, "monitor", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = n.appClient(t, tr.Status.Token).AppsV1().Deployments(n.ns).List(ctx, metav1.ListOptions{})
		if !apierrors.IsUnauthorized(err) {
			t.Errorf("a valid token of the cluster the node was not given: %v, want 401", err)
		}
	})

	t.Run("revoking RBAC ends the watch and refuses the next list", func(t *testing.T) {
		if _, err := app.CoreV1().ConfigMaps(n.ns).List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatalf("list ConfigMaps: %v", err)
		}
		cw, err := app.CoreV1().ConfigMaps(n.ns).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer cw.Stop()
		if err := n.kube.RbacV1().RoleBindings(n.ns).Delete(ctx, "configmaps", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		for ended := false; !ended; {
			select {
			case _, ok := <-cw.ResultChan():
				ended = !ok
			case <-wctx.Done():
				t.Fatal("the ConfigMaps watch did not end after the application's RoleBinding was deleted")
			}
		}
		_, err = app.CoreV1().ConfigMaps(n.ns).List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "may not list and watch") {
			t.Errorf("list after the revocation: %v, want 403 saying what is not allowed", err)
		}
	})

	t.Run("offline: reads from the store, writes 503", func(t *testing.T) {
		n.stop()
		if _, err := n.client.WaitFor(ctx, func(s edgeclient.State) bool { return !s.Connected }); err != nil {
			t.Fatal(err)
		}
		d, err := app.AppsV1().Deployments(n.ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil || *d.Spec.Replicas != 2 {
			t.Fatalf("offline get: %v, %v", d, err)
		}
		_, err = app.AppsV1().Deployments(n.ns).Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), metav1.PatchOptions{})
		var st apierrors.APIStatus
		if !errors.As(err, &st) || st.Status().Code != 503 || !strings.Contains(err.Error(), "offline") {
			t.Errorf("offline write: %v, want 503 saying the node is offline", err)
		}
	})
}

// appClient is a clientset as an application of the node builds it with
// rest.InClusterConfig: the local API's address, the CA the pod trusts
// and the pod's token, no client certificate.
func (n *liveNode) appClient(t *testing.T, token string) kubernetes.Interface {
	t.Helper()
	cfg := &rest.Config{Host: n.addr, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAFile: n.caFile}}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.CloseIdleConnections)
	cs, err := kubernetes.NewForConfigAndClient(cfg, hc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func waitEvent(ctx context.Context, t *testing.T, w watch.Interface, what string, cond func(watch.Event) bool) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("the watch ended waiting for %s", what)
			}
			if cond(ev) {
				return
			}
		case <-wctx.Done():
			t.Fatalf("waiting for %s: %v", what, fmt.Errorf("timed out"))
		}
	}
}
