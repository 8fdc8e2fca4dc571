package nodesync

import (
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

const edgeLabel = "node-role.kubernetes.io/edge"

// recorder is a feed.Publisher that records what each node was sent.
type recorder struct {
	mu  sync.Mutex // guards got
	got map[string][]*feed.Object
}

func (r *recorder) Publish(node string, obj *feed.Object) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got[node] = append(r.got[node], obj)
}

// take returns and forgets what node was sent.
func (r *recorder) take(node string) []*feed.Object {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.got[node]
	delete(r.got, node)
	return out
}

func node(name string, uid types.UID, rv string, labels map[string]string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, UID: uid, ResourceVersion: rv, Labels: labels,
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}},
	}
}

// newController returns a controller over an informer that is never
// started: the test fills its cache and calls sync as a worker would.
func newController(t *testing.T) (*Controller, cache.Indexer, *recorder) {
	t.Helper()
	inf := cache.NewSharedIndexInformer(&cache.ListWatch{}, &corev1.Node{}, 0, cache.Indexers{})
	rec := &recorder{got: map[string][]*feed.Object{}}
	c, err := New(Config{Nodes: inf, IsEdge: func(n *corev1.Node) bool { _, ok := n.Labels[edgeLabel]; return ok }})
	if err != nil {
		t.Fatal(err)
	}
	c.pub = rec // as Run sets it
	return c, inf.GetIndexer(), rec
}

func decodeNode(t *testing.T, obj *feed.Object) *edgesyncv1.NodeEvent {
	t.Helper()
	msg := &edgesyncv1.SyncResponse{}
	if err := proto.Unmarshal(obj.Payload, msg); err != nil {
		t.Fatal(err)
	}
	ev := msg.GetNodeEvent()
	if ev == nil {
		t.Fatalf("%s: not a NodeEvent: %v", obj.Key, msg)
	}
	return ev
}

// one asserts that exactly one object was sent and returns it.
func one(t *testing.T, objs []*feed.Object) *feed.Object {
	t.Helper()
	if len(objs) != 1 {
		t.Fatalf("sent %d objects, want 1", len(objs))
	}
	return objs[0]
}

func mustSync(t *testing.T, c *Controller, name string) {
	t.Helper()
	if err := c.sync(name); err != nil {
		t.Fatalf("sync %s: %v", name, err)
	}
}

func TestNodeIsSentToItselfWithoutStatusAndNotForStatusChanges(t *testing.T) {
	c, nodes, rec := newController(t)
	edge := map[string]string{edgeLabel: ""}
	if err := nodes.Add(node("edge-a", "uid-a", "10", edge)); err != nil {
		t.Fatal(err)
	}
	mustSync(t, c, "edge-a")
	obj := one(t, rec.take("edge-a"))
	if want := (feed.Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: "edge-a"}); obj.Key != want || obj.ResourceVersion != "10" || obj.UID != "uid-a" || obj.Deleted {
		t.Fatalf("sent %+v, want APPLY %s at 10", obj, want)
	}
	ev := decodeNode(t, obj)
	if ev.GetType() != edgesyncv1.EventType_EVENT_TYPE_APPLY || ev.GetNode().GetMetadata().GetResourceVersion() != "10" {
		t.Errorf("event %v, want APPLY at resourceVersion 10", ev)
	}
	if ev.GetNode().GetStatus() != nil || len(ev.GetNode().GetMetadata().GetManagedFields()) != 0 {
		t.Errorf("node sent with status or managed fields: %v", ev.GetNode())
	}
	if got, _, _ := nodes.GetByKey("edge-a"); len(got.(*corev1.Node).Status.Conditions) != 1 || len(got.(*corev1.Node).ManagedFields) != 1 {
		t.Error("encoding changed the cached Node")
	}

	// Status only: nothing sent; a reconnecting edge is told the version
	// it already holds.
	statusOnly := node("edge-a", "uid-a", "11", edge)
	statusOnly.Status.Conditions[0].Status = corev1.ConditionUnknown
	if err := nodes.Update(statusOnly); err != nil {
		t.Fatal(err)
	}
	mustSync(t, c, "edge-a")
	if got := rec.take("edge-a"); len(got) != 0 {
		t.Errorf("a status-only change sent %d objects", len(got))
	}
	desired, err := c.Desired("edge-a")
	if err != nil || len(desired) != 1 || desired[0].ResourceVersion != "10" {
		t.Fatalf("Desired = %v, %v; want the Node at 10", desired, err)
	}

	// A label (kubectl label) and cordon (kubectl cordon) are sent.
	labelled := node("edge-a", "uid-a", "12", map[string]string{edgeLabel: "", "zone": "north"})
	labelled.Spec.Unschedulable = true
	if err := nodes.Update(labelled); err != nil {
		t.Fatal(err)
	}
	mustSync(t, c, "edge-a")
	ev = decodeNode(t, one(t, rec.take("edge-a")))
	if ev.GetNode().GetMetadata().GetLabels()["zone"] != "north" || !ev.GetNode().GetSpec().GetUnschedulable() || ev.GetNode().GetMetadata().GetResourceVersion() != "12" {
		t.Errorf("sent %v, want zone=north, unschedulable, at 12", ev.GetNode())
	}
	if desired, err := c.Desired("edge-a"); err != nil || len(desired) != 1 || desired[0].ResourceVersion != "12" {
		t.Fatalf("Desired = %v, %v; want the Node at 12", desired, err)
	}

	// Deleted: a DELETE carrying the uid.
	if err := nodes.Delete(labelled); err != nil {
		t.Fatal(err)
	}
	mustSync(t, c, "edge-a")
	obj = one(t, rec.take("edge-a"))
	if !obj.Deleted || obj.UID != "uid-a" || decodeNode(t, obj).GetType() != edgesyncv1.EventType_EVENT_TYPE_DELETE {
		t.Errorf("sent %+v, want a DELETE of uid-a", obj)
	}
	if desired, err := c.Desired("edge-a"); err != nil || len(desired) != 0 {
		t.Errorf("Desired of a deleted node = %v, %v; want nothing", desired, err)
	}
	if n := c.encoded.Len(); n != 0 {
		t.Errorf("encode cache holds %d objects after the only node was deleted", n)
	}
}

func TestOnlyEdgeNodesGetTheirNode(t *testing.T) {
	c, nodes, rec := newController(t)
	if err := nodes.Add(node("cloud", "uid-c", "5", map[string]string{"role": "cloud"})); err != nil {
		t.Fatal(err)
	}
	if err := nodes.Add(node("edge-b", "uid-b", "6", map[string]string{edgeLabel: ""})); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"cloud", "edge-b", "missing"} {
		mustSync(t, c, name)
	}
	if got := rec.take("missing"); len(got) != 0 {
		t.Errorf("a node never sent its Node was sent %d objects", len(got))
	}
	if desired, err := c.Desired("cloud"); err != nil || len(desired) != 0 {
		t.Errorf("Desired(cloud) = %v, %v; want nothing for a node without the edge label", desired, err)
	}
	if got := rec.take("cloud"); len(got) != 0 {
		t.Errorf("a node without the edge label was sent %d objects", len(got))
	}
	if obj := one(t, rec.take("edge-b")); obj.Key.Name != "edge-b" || obj.Deleted {
		t.Errorf("edge-b was sent %+v, want its own Node", obj)
	}
	desired, err := c.Desired("edge-b")
	if err != nil || len(desired) != 1 || desired[0].Key.Name != "edge-b" {
		t.Errorf("Desired(edge-b) = %v, %v; want only its own Node", desired, err)
	}

	// Losing the edge label is like being deleted.
	if err := nodes.Update(node("edge-b", "uid-b", "9", map[string]string{"role": "cloud"})); err != nil {
		t.Fatal(err)
	}
	mustSync(t, c, "edge-b")
	if obj := one(t, rec.take("edge-b")); !obj.Deleted || obj.UID != "uid-b" {
		t.Errorf("edge-b was sent %+v after losing the edge label, want a DELETE", obj)
	}
}

func TestDesiredBeforeTheWorkerSendsOnce(t *testing.T) {
	c, nodes, rec := newController(t)
	if err := nodes.Add(node("edge-c", "uid-c", "7", map[string]string{edgeLabel: ""})); err != nil {
		t.Fatal(err)
	}
	desired, err := c.Desired("edge-c")
	if err != nil || len(desired) != 1 || desired[0].ResourceVersion != "7" {
		t.Fatalf("Desired = %v, %v; want the Node at 7", desired, err)
	}
	// The worker then handles the Add event of the same version: the
	// session already queued it from Desired.
	mustSync(t, c, "edge-c")
	if got := rec.take("edge-c"); len(got) != 0 {
		t.Errorf("the version Desired answered was published again (%d objects)", len(got))
	}
	// Recreated under the same name: a new uid is a new object.
	if err := nodes.Update(node("edge-c", "uid-c2", "8", map[string]string{edgeLabel: ""})); err != nil {
		t.Fatal(err)
	}
	mustSync(t, c, "edge-c")
	if obj := one(t, rec.take("edge-c")); obj.UID != "uid-c2" || obj.Deleted {
		t.Errorf("sent %+v, want the new Node uid-c2", obj)
	}
}

func TestSameContent(t *testing.T) {
	base := node("n", "u", "1", map[string]string{"a": "b"})
	tests := []struct {
		name   string
		change func(*corev1.Node)
		same   bool
	}{
		{"resource version", func(n *corev1.Node) { n.ResourceVersion = "2" }, true},
		{"managed fields", func(n *corev1.Node) { n.ManagedFields = nil }, true},
		{"status", func(n *corev1.Node) { n.Status.Conditions = nil }, true},
		{"label", func(n *corev1.Node) { n.Labels = map[string]string{"a": "c"} }, false},
		{"annotation", func(n *corev1.Node) { n.Annotations = map[string]string{"x": "y"} }, false},
		{"taint", func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}
		}, false},
		{"cordon", func(n *corev1.Node) { n.Spec.Unschedulable = true }, false},
		{"uid", func(n *corev1.Node) { n.UID = "v" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			changed := base.DeepCopy()
			tt.change(changed)
			if got := sameContent(base, changed); got != tt.same {
				t.Errorf("sameContent = %v, want %v", got, tt.same)
			}
		})
	}
}
