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
// and cordon do, and returns its new resourceVersion.
func patchNode(ctx context.Context, t *testing.T, client kubernetes.Interface, name string, patch map[string]any) string {
	t.Helper()
	b, err := json.Marshal(patch)
	if err != nil {
		t.Fatal(err)
	}
	n, err := client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{})
	if err != nil {
		t.Fatalf("patch node %s with %s: %v", name, b, err)
	}
	return n.ResourceVersion
}

// withoutNodes drops the nodes' own Nodes from objs, for tests about
// other kinds: every edge node is sent its Node.
func withoutNodes(objs []*feed.Object) []*feed.Object {
	var out []*feed.Object
	for _, o := range objs {
		if o.Key.Kind != edgesyncv1.Kind_KIND_NODE {
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

// nodeSends counts the Node events node was sent of its own Node.
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
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		now := metav1.Now()
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "Test", LastHeartbeatTime: now, LastTransitionTime: now}}
		if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
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
	rv := patchNode(ctx, t, client, a, map[string]any{"metadata": map[string]any{"labels": map[string]any{"edgesync.test/zone": "north"}}})
	msg = rec.waitApplied(t, a, nodeKey(a), func(m *edgesyncv1.SyncResponse) bool {
		return m.GetNodeEvent().GetNode().GetMetadata().GetLabels()["edgesync.test/zone"] == "north"
	})
	if got := msg.GetNodeEvent().GetNode().GetMetadata().GetResourceVersion(); got != rv {
		t.Errorf("labelled Node sent at resourceVersion %s, want %s", got, rv)
	}

	// A status write (what every NodeStatus report causes) is not sent;
	// the next change to the spec (kubectl cordon) is. (The cluster's own
	// controllers may change the Node in between, so only the status
	// write's version is checked.)
	before := len(nodeSends(rec, a))
	n, err := client.CoreV1().Nodes().Get(ctx, a, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Conditions[0].Reason = "StillReady"
	n.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(time.Now().Add(time.Second))
	n, err = client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	statusRV := n.ResourceVersion
	rv = patchNode(ctx, t, client, a, map[string]any{"spec": map[string]any{"unschedulable": true}})
	rec.waitApplied(t, a, nodeKey(a), func(m *edgesyncv1.SyncResponse) bool {
		return m.GetNodeEvent().GetNode().GetSpec().GetUnschedulable()
	})
	sends := nodeSends(rec, a)
	for _, o := range sends[before:] {
		if o.ResourceVersion == statusRV {
			t.Errorf("the status-only write (resourceVersion %s) was sent", statusRV)
		}
	}
	if last := sends[len(sends)-1]; last.ResourceVersion != rv && len(sends) == before+1 {
		t.Errorf("cordoned Node sent at resourceVersion %s, want %s", last.ResourceVersion, rv)
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
