package testcluster

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"
)

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs creates or replaces the CustomResourceDefinitions in the YAML
// files of dir (edgesync's deploy/crds, or KubeEdge's in
// ../shared/kubeedge-crds, which have the same names) and waits until they
// are established.
func InstallCRDs(ctx context.Context, t testing.TB, dyn dynamic.Interface, dir string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRD files in %s: %v", dir, err)
	}
	crds := dyn.Resource(crdResource)
	var names []string
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			var obj unstructured.Unstructured
			if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("decode %s: %v", file, err)
			}
			if obj.GetKind() != "CustomResourceDefinition" {
				continue
			}
			names = append(names, obj.GetName())
			// Tests in other packages may replace the same CRDs (edgesync's
			// and KubeEdge's share names and are compatible): retry on
			// conflict.
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				existing, err := crds.Get(ctx, obj.GetName(), metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					_, err = crds.Create(ctx, obj.DeepCopy(), metav1.CreateOptions{})
					if apierrors.IsAlreadyExists(err) {
						return apierrors.NewConflict(crdResource.GroupResource(), obj.GetName(), err)
					}
					return err
				} else if err != nil {
					return err
				}
				existing.Object["spec"] = obj.Object["spec"]
				existing.SetAnnotations(obj.GetAnnotations())
				_, err = crds.Update(ctx, existing, metav1.UpdateOptions{})
				return err
			})
			if err != nil {
				t.Fatalf("install CRD %s: %v", obj.GetName(), err)
			}
		}
	}
	for _, name := range names {
		for {
			crd, err := crds.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if established(crd) {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("CRD %s not established: %v", name, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
