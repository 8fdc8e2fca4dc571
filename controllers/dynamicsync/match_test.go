package dynamicsync

import (
	"testing"

	"google.golang.org/grpc/codes"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// A subscription covers exactly the objects its namespace and selectors
// name; field selectors reach any scalar field of the object.
func TestSubscriptionMatches(t *testing.T) {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": "p", "namespace": "factory", "labels": map[string]any{"app": "web"}},
		"spec":     map[string]any{"nodeName": "edge-1", "priority": int64(5), "hostNetwork": true},
	}}
	tests := []struct {
		namespace, labels, fields string
		want                      bool
	}{
		{"", "", "", true},
		{"factory", "", "", true},
		{"office", "", "", false},
		{"", "app=web", "", true},
		{"", "app=db", "", false},
		{"", "app in (web,api),!canary", "", true},
		{"", "", "metadata.name=p", true},
		{"", "", "spec.nodeName=edge-1", true},
		{"", "", "spec.nodeName=edge-2", false},
		{"", "", "spec.nodeName!=edge-2,spec.priority=5,spec.hostNetwork=true", true},
		{"", "", "spec.missing=x", false},
	}
	for _, tt := range tests {
		s := newSubscription(&edgesyncv1.Subscription{Id: "s", ServiceAccountNamespace: "factory", ServiceAccountName: "app",
			Version: "v1", Resource: "pods", Namespace: tt.namespace, LabelSelector: tt.labels, FieldSelector: tt.fields})
		if s.phase == ended {
			t.Fatalf("%+v refused: %s", tt, s.message)
		}
		if got := s.matches(obj); got != tt.want {
			t.Errorf("namespace %q labels %q fields %q: matches = %v, want %v", tt.namespace, tt.labels, tt.fields, got, tt.want)
		}
	}
}

func TestMalformedSubscriptionsAreRefused(t *testing.T) {
	good := func() *edgesyncv1.Subscription {
		return &edgesyncv1.Subscription{Id: "s-1", ServiceAccountNamespace: "ns", ServiceAccountName: "app", Version: "v1", Resource: "configmaps"}
	}
	tests := map[string]func(*edgesyncv1.Subscription){
		"empty id":           func(s *edgesyncv1.Subscription) { s.Id = "" },
		"id with a slash":    func(s *edgesyncv1.Subscription) { s.Id = "a/b" },
		"no ServiceAccount":  func(s *edgesyncv1.Subscription) { s.ServiceAccountName = "" },
		"no resource":        func(s *edgesyncv1.Subscription) { s.Resource = "" },
		"bad label selector": func(s *edgesyncv1.Subscription) { s.LabelSelector = "a=(" },
		"bad field selector": func(s *edgesyncv1.Subscription) { s.FieldSelector = "x" },
	}
	for name, spoil := range tests {
		t.Run(name, func(t *testing.T) {
			spec := good()
			spoil(spec)
			s := newSubscription(spec)
			if s.phase != ended || s.code != codes.InvalidArgument || s.message == "" {
				t.Errorf("phase %v code %v message %q, want ended with INVALID_ARGUMENT and a reason", s.phase, s.code, s.message)
			}
		})
	}
	if s := newSubscription(good()); s.phase != pending {
		t.Errorf("a well-formed subscription is %v (%s), want pending", s.phase, s.message)
	}
}
