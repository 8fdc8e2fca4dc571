package controllers_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/controllers"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

// nodeKey names a node's own Node on the wire.
func nodeKey(name string) feed.Key { return feed.Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: name} }

// patchNode applies a JSON merge patch to a Node, as kubectl label, taint
// and cordon do.
func patchNode(ctx context.Context, t *testing.T, client kubernetes.Interface, name string, patch map[string]any) {
	t.Helper()
	b, err := json.Marshal(patch)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch node %s with %s: %v", name, b, err)
	}
}

// withoutNodes drops the nodes' own Nodes from objs, for tests about
// other kinds: every edge node is sent its Node. It drops Services and
// EndpointSlices too: every edge node is sent every Service meant for
// edges, including those other tests (of other packages too) create.
func withoutNodes(objs []*feed.Object) []*feed.Object {
	var out []*feed.Object
	for _, o := range objs {
		switch o.Key.Kind {
		case edgesyncv1.Kind_KIND_NODE, edgesyncv1.Kind_KIND_SERVICE, edgesyncv1.Kind_KIND_ENDPOINT_SLICE:
		default:
			out = append(out, o)
		}
	}
	return out
}

// sameNodeContent tells whether two NodeEvents carry the same metadata
// and spec, apart from the resourceVersion.
func sameNodeContent(a, b *edgesyncv1.SyncResponse) bool {
	an := proto.Clone(a.GetNodeEvent().GetNode()).(*corev1pb.Node)
	bn := proto.Clone(b.GetNodeEvent().GetNode()).(*corev1pb.Node)
	an.Metadata.ResourceVersion, bn.Metadata.ResourceVersion = nil, nil
	return proto.Equal(an, bn)
}

// reportReady writes a Ready condition into a Node's status as an edge's
// NodeStatus report does: a patch of the status subresource, which the
// cluster's controllers writing the Node meanwhile cannot make conflict.
func reportReady(ctx context.Context, t *testing.T, client kubernetes.Interface, name, reason string) {
	t.Helper()
	now := metav1.Now()
	b, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: reason, LastHeartbeatTime: now, LastTransitionTime: now,
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, b, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("patch status of node %s: %v", name, err)
	}
}

// nodeSends returns the events node was sent of its own Node, in order.
func nodeSends(rec *recorder, node string) []*feed.Object {
	var out []*feed.Object
	for _, o := range rec.sent(node) {
		if o.Key == nodeKey(node) {
			out = append(out, o)
		}
	}
	return out
}

// TestNodeObjectReachesItsEdge: an edge node is sent its own Node (never
// another node's), without status; kubectl label, cordon and taint reach
// it again; a status write does not; a deleted Node is sent as DELETE.
func TestNodeObjectReachesItsEdge(t *testing.T) {
	client := testcluster.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	rec := newRecorder()
	ctrls := start(t, controllers.Config{DisableDevices: true}, rec)

	a := edgeNode(t, client, "node-obj-a")
	b := edgeNode(t, client, "node-obj-b")
	// The node lifecycle controller may taint a node without status; give
	// it a Ready status as an edge would report.
	for _, name := range []string{a, b} {
		reportReady(ctx, t, client, name, "Test")
	}

	msg := rec.waitApplied(t, a, nodeKey(a), nil)
	got := msg.GetNodeEvent().GetNode()
	if got.GetMetadata().GetName() != a || got.GetMetadata().GetNamespace() != "" || got.GetStatus() != nil {
		t.Errorf("node %s was sent %v, want its own Node without namespace and status", a, got)
	}
	if _, ok := got.GetMetadata().GetLabels()[controllers.DefaultEdgeLabel]; !ok {
		t.Errorf("Node sent without its labels: %v", got.GetMetadata().GetLabels())
	}
	rec.waitApplied(t, b, nodeKey(b), nil)
	for node, other := range map[string]string{a: b, b: a} {
		for _, o := range rec.sent(node) {
			if o.Key.Kind == edgesyncv1.Kind_KIND_NODE && o.Key.Name != node {
				t.Errorf("node %s was sent the Node of %s", node, other)
			}
		}
		desired, err := ctrls.Desired(node)
		if err != nil {
			t.Fatal(err)
		}
		nodes := 0
		for _, o := range desired {
			if o.Key.Kind == edgesyncv1.Kind_KIND_NODE {
				nodes++
				if o.Key != nodeKey(node) {
					t.Errorf("Desired(%s) holds the Node of %s", node, o.Key.Name)
				}
			}
		}
		if nodes != 1 {
			t.Errorf("Desired(%s) holds %d Nodes, want its own", node, nodes)
		}
	}

	// kubectl label.
	patchNode(ctx, t, client, a, map[string]any{"metadata": map[string]any{"labels": map[string]any{"edgesync.test/zone": "north"}}})
	rec.waitApplied(t, a, nodeKey(a), func(m *edgesyncv1.SyncResponse) bool {
		return m.GetNodeEvent().GetNode().GetMetadata().GetLabels()["edgesync.test/zone"] == "north"
	})

	// A status write (what every NodeStatus report causes) is not sent;
	// the next change to the spec (kubectl cordon) is. The cluster's own
	// controllers change the Node too (a cordon gets a taint), so what is
	// checked is that no two Node events in a row carry the same metadata
	// and spec.
	reportReady(ctx, t, client, a, "StillReady")
	// Latest wins: the cluster reacts to a cordon with a taint of its
	// own, so the edge may receive the Node only at that later version.
	patchNode(ctx, t, client, a, map[string]any{"spec": map[string]any{"unschedulable": true}})
	rec.waitApplied(t, a, nodeKey(a), func(m *edgesyncv1.SyncResponse) bool {
		return m.GetNodeEvent().GetNode().GetSpec().GetUnschedulable()
	})
	sends := nodeSends(rec, a)
	for i := 1; i < len(sends); i++ {
		if prev, cur := decode(t, sends[i-1]), decode(t, sends[i]); sameNodeContent(prev, cur) {
			t.Errorf("the Node was sent at resourceVersion %s with the metadata and spec sent at %s (a status-only change)",
				sends[i].ResourceVersion, sends[i-1].ResourceVersion)
		}
	}

	// kubectl taint.
	patchNode(ctx, t, client, a, map[string]any{"spec": map[string]any{"taints": []map[string]any{{"key": "edgesync.test/dedicated", "value": "edge", "effect": "NoSchedule"}}}})
	rec.waitApplied(t, a, nodeKey(a), func(m *edgesyncv1.SyncResponse) bool {
		for _, taint := range m.GetNodeEvent().GetNode().GetSpec().GetTaints() {
			if taint.GetKey() == "edgesync.test/dedicated" && taint.GetEffect() == "NoSchedule" {
				return true
			}
		}
		return false
	})

	// A deleted Node: DELETE to its node only.
	if err := client.CoreV1().Nodes().Delete(ctx, b, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitDeleted(t, b, nodeKey(b))
	if last := rec.last(a, nodeKey(a)); last == nil || last.Deleted {
		t.Errorf("node %s lost its Node when %s was deleted", a, b)
	}
}
