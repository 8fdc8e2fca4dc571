package testcluster

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
)

// ServerUser is the server's ServiceAccount, as deploy/ names it.
const ServerUser = "system:serviceaccount:edgesync-system:edgesync-server"

// AsServer returns a copy of admin that impersonates the server's
// ServiceAccount: it may do what deploy/rbac grants, nothing more (call
// ApplyRBAC first).
func AsServer(admin *rest.Config) *rest.Config {
	cfg := rest.CopyConfig(admin)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: ServerUser,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:edgesync-system", "system:authenticated"},
	}
	return cfg
}

// ApplyRBAC creates or replaces deploy/namespace.yaml (the server's
// namespace, ServiceAccount and what it may do there) and the RBAC objects
// of deploy/rbac (under root, the repository) with the admin
// configuration.
func ApplyRBAC(t testing.TB, admin *rest.Config, root string) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	rbac := func(resource string) schema.GroupVersionResource {
		return schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: resource}
	}
	resources := map[string]schema.GroupVersionResource{
		"ClusterRole": rbac("clusterroles"), "ClusterRoleBinding": rbac("clusterrolebindings"),
		"Role": rbac("roles"), "RoleBinding": rbac("rolebindings"),
		"Namespace": {Version: "v1", Resource: "namespaces"}, "ServiceAccount": {Version: "v1", Resource: "serviceaccounts"},
	}
	files, _ := filepath.Glob(filepath.Join(root, "deploy", "rbac", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no RBAC files in deploy/rbac")
	}
	files = append([]string{filepath.Join(root, "deploy", "namespace.yaml")}, files...)
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			obj := &unstructured.Unstructured{}
			if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("decode %s: %v", file, err)
			}
			gvr, ok := resources[obj.GetKind()]
			if !ok {
				t.Fatalf("%s: unexpected kind %s in deploy/rbac", file, obj.GetKind())
			}
			if ns := obj.GetNamespace(); ns != "" {
				// The server's own namespace (deploy/namespace.yaml) may not
				// exist in a test cluster yet.
				nsObj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
				if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Create(t.Context(), nsObj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
					t.Fatalf("create namespace %s: %v", ns, err)
				}
			}
			ri := dyn.Resource(gvr).Namespace(obj.GetNamespace())
			_, err := ri.Create(t.Context(), obj, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				// Other packages' tests apply the same objects at the same time.
				err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
					existing, err := ri.Get(t.Context(), obj.GetName(), metav1.GetOptions{})
					if err != nil {
						return err
					}
					obj.SetResourceVersion(existing.GetResourceVersion())
					_, err = ri.Update(t.Context(), obj, metav1.UpdateOptions{})
					return err
				})
			}
			if err != nil {
				t.Fatalf("apply %s %s: %v", obj.GetKind(), obj.GetName(), err)
			}
		}
	}
}
