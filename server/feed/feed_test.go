package feed_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/server/feed"
)

func TestTombstoneIsADeleteOfTheRightKind(t *testing.T) {
	tests := []struct {
		kind edgesyncv1.Kind
		meta func(*edgesyncv1.SyncResponse) (edgesyncv1.EventType, *metav1pb.ObjectMeta)
	}{
		{edgesyncv1.Kind_KIND_POD, func(m *edgesyncv1.SyncResponse) (edgesyncv1.EventType, *metav1pb.ObjectMeta) {
			return m.GetPodEvent().GetType(), m.GetPodEvent().GetPod().GetMetadata()
		}},
		{edgesyncv1.Kind_KIND_CONFIG_MAP, func(m *edgesyncv1.SyncResponse) (edgesyncv1.EventType, *metav1pb.ObjectMeta) {
			return m.GetConfigMapEvent().GetType(), m.GetConfigMapEvent().GetConfigMap().GetMetadata()
		}},
		{edgesyncv1.Kind_KIND_SECRET, func(m *edgesyncv1.SyncResponse) (edgesyncv1.EventType, *metav1pb.ObjectMeta) {
			return m.GetSecretEvent().GetType(), m.GetSecretEvent().GetSecret().GetMetadata()
		}},
		{edgesyncv1.Kind_KIND_DEVICE, func(m *edgesyncv1.SyncResponse) (edgesyncv1.EventType, *metav1pb.ObjectMeta) {
			return m.GetDeviceEvent().GetType(), m.GetDeviceEvent().GetDevice().GetMetadata()
		}},
		{edgesyncv1.Kind_KIND_NODE, func(m *edgesyncv1.SyncResponse) (edgesyncv1.EventType, *metav1pb.ObjectMeta) {
			return m.GetNodeEvent().GetType(), m.GetNodeEvent().GetNode().GetMetadata()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.kind.String(), func(t *testing.T) {
			key := feed.Key{Kind: tt.kind, Namespace: "ns", Name: "x"}
			obj, err := feed.Tombstone(key, "uid-1")
			if err != nil {
				t.Fatal(err)
			}
			if !obj.Deleted || obj.Key != key || obj.UID != "uid-1" {
				t.Fatalf("object %+v, want a deleted %s with uid-1", obj, key)
			}
			var msg edgesyncv1.SyncResponse
			if err := proto.Unmarshal(obj.Payload, &msg); err != nil {
				t.Fatal(err)
			}
			typ, meta := tt.meta(&msg)
			if typ != edgesyncv1.EventType_EVENT_TYPE_DELETE || meta.GetNamespace() != "ns" || meta.GetName() != "x" || meta.GetUid() != "uid-1" {
				t.Fatalf("decoded %v", &msg)
			}
		})
	}
	if _, err := feed.Tombstone(feed.Key{Name: "x"}, ""); err == nil {
		t.Fatal("a tombstone of no kind was encoded")
	}
}

func TestResourceNamesRoundTrip(t *testing.T) {
	tests := []struct {
		group, version, resource, name string
		want                           string
	}{
		{"apps", "v1", "deployments", "web", "apps/v1/deployments/web"},
		{"", "v1", "configmaps", "settings", "v1/configmaps/settings"},
		{"example.com", "v1beta1", "widgets", "w.1", "example.com/v1beta1/widgets/w.1"},
	}
	for _, tt := range tests {
		got := feed.ResourceName(tt.group, tt.version, tt.resource, tt.name)
		if got != tt.want {
			t.Errorf("ResourceName(%q, %q, %q, %q) = %q, want %q", tt.group, tt.version, tt.resource, tt.name, got, tt.want)
		}
		gv, res, name, ok := feed.SplitResourceName(got)
		wantGV := tt.version
		if tt.group != "" {
			wantGV = tt.group + "/" + tt.version
		}
		if !ok || gv != wantGV || res != tt.resource || name != tt.name {
			t.Errorf("SplitResourceName(%q) = %q, %q, %q, %v", got, gv, res, name, ok)
		}
		obj, err := feed.Tombstone(feed.Key{Kind: edgesyncv1.Kind_KIND_RESOURCE, Namespace: "ns", Name: got}, "")
		if err != nil {
			t.Fatal(err)
		}
		var msg edgesyncv1.SyncResponse
		if err := proto.Unmarshal(obj.Payload, &msg); err != nil {
			t.Fatal(err)
		}
		ev := msg.GetResourceEvent()
		if ev.GetType() != edgesyncv1.EventType_EVENT_TYPE_DELETE || ev.GetGroup() != tt.group || ev.GetVersion() != tt.version ||
			ev.GetResource() != tt.resource || ev.GetMetadata().GetName() != tt.name || ev.GetMetadata().GetNamespace() != "ns" {
			t.Errorf("tombstone of %s decoded as %v", got, &msg)
		}
	}
	for _, bad := range []string{"", "web", "deployments/web", "/deployments/web", "v1//web", "v1/configmaps/"} {
		if _, _, _, ok := feed.SplitResourceName(bad); ok {
			t.Errorf("SplitResourceName(%q) accepted a name that is not <apiVersion>/<resource>/<name>", bad)
		}
	}
}
