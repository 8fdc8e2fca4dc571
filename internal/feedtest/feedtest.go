// Package feedtest is an in-memory feed.Controllers for tests of the sync
// server and its clients: tests set what each node should hold (changes are
// published to the server like real controllers would), build ConfigMap and
// Pod objects in one call, decide which nodes are admitted, and observe
// reports and ended sessions.
//
//	ctrls := feedtest.New()
//	env := servertest.Start(t, ctrls) // calls ctrls.SetPublisher(env.Server)
//	ctrls.Put("node-a", feedtest.ConfigMap("ns", "cm", "1", map[string]string{"k": "v"}))
package feedtest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// ErrHold, returned by a Responder, leaves the report unanswered: the test
// answers it later through Report.Answer (or never).
var ErrHold = errors.New("feedtest: hold the answer")

// Responder decides the answer to a report: nil answers OK, a status error
// answers with its code and message, ErrHold answers nothing. It may panic
// to test the server's recovery.
type Responder func(node string, req *edgesyncv1.SyncRequest) error

// Report is one report the server handed over.
type Report struct {
	Node    string
	Request *edgesyncv1.SyncRequest
	// Answer sends the StatusResult; call it at most once, and only for
	// reports the Responder held.
	Answer feed.Answer
}

// Controllers is an in-memory feed.Controllers. All methods are safe for
// concurrent use.
type Controllers struct {
	mu         sync.Mutex // guards the fields below
	changed    chan struct{}
	publisher  feed.Publisher
	desired    map[string]map[feed.Key]*feed.Object
	desiredErr error
	respond    Responder
	admit      func(node string) error
	reports    []Report
	ended      []string
}

var (
	_ feed.Controllers = (*Controllers)(nil)
	_ feed.Admitter    = (*Controllers)(nil)
)

// New returns controllers that want nothing on any node and answer every
// report OK.
func New() *Controllers {
	return &Controllers{changed: make(chan struct{}), desired: make(map[string]map[feed.Key]*feed.Object)}
}

// SetPublisher sets where changes are published (the server under test).
// servertest.Start calls it.
func (c *Controllers) SetPublisher(p feed.Publisher) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.publisher = p
}

// Put makes node hold obj (replacing any version of the same key) and
// publishes it.
func (c *Controllers) Put(node string, objs ...*feed.Object) {
	c.mu.Lock()
	m := c.node(node)
	for _, obj := range objs {
		m[obj.Key] = obj
	}
	p := c.publisher
	c.mu.Unlock()
	if p != nil {
		for _, obj := range objs {
			p.Publish(node, obj)
		}
	}
}

// Delete makes node hold key no more and publishes its tombstone.
func (c *Controllers) Delete(node string, key feed.Key) {
	c.mu.Lock()
	m := c.node(node)
	old, ok := m[key]
	delete(m, key)
	p := c.publisher
	c.mu.Unlock()
	if ok && p != nil {
		p.Publish(node, Tombstone(key, old.UID))
	}
}

// Set replaces everything node should hold with objs, publishing new and
// changed objects and tombstones for removed ones.
func (c *Controllers) Set(node string, objs ...*feed.Object) {
	next := make(map[feed.Key]*feed.Object, len(objs))
	for _, obj := range objs {
		next[obj.Key] = obj
	}
	c.mu.Lock()
	prev := c.desired[node]
	c.desired[node] = next
	p := c.publisher
	c.mu.Unlock()
	if p == nil {
		return
	}
	for key, old := range prev {
		if _, ok := next[key]; !ok {
			p.Publish(node, Tombstone(key, old.UID))
		}
	}
	for key, obj := range next {
		if old, ok := prev[key]; !ok || old.ResourceVersion != obj.ResourceVersion {
			p.Publish(node, obj)
		}
	}
}

// SetDesiredError makes Desired fail with err (nil to succeed again).
func (c *Controllers) SetDesiredError(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.desiredErr = err
}

// Respond sets how reports are answered; nil answers every report OK.
func (c *Controllers) Respond(r Responder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.respond = r
}

// SetAdmit sets how nodes are admitted at Hello; nil admits every node.
func (c *Controllers) SetAdmit(admit func(node string) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.admit = admit
}

// Admit implements feed.Admitter with the function SetAdmit set.
func (c *Controllers) Admit(node string) error {
	c.mu.Lock()
	admit := c.admit
	c.mu.Unlock()
	if admit == nil {
		return nil
	}
	return admit(node)
}

func (c *Controllers) node(name string) map[feed.Key]*feed.Object {
	m := c.desired[name]
	if m == nil {
		m = make(map[feed.Key]*feed.Object)
		c.desired[name] = m
	}
	return m
}

// Desired implements feed.Source.
func (c *Controllers) Desired(node string) ([]*feed.Object, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.desiredErr != nil {
		return nil, c.desiredErr
	}
	objs := make([]*feed.Object, 0, len(c.desired[node]))
	for _, obj := range c.desired[node] {
		objs = append(objs, obj)
	}
	return objs, nil
}

// Tombstone implements feed.Source as the controllers do: an error for a
// kind without a DELETE event (an edge may claim to hold anything).
func (c *Controllers) Tombstone(key feed.Key, uid string) (*feed.Object, error) {
	return feed.Tombstone(key, uid)
}

// HandleReport implements feed.Reporter: it records the report and answers
// it as the Responder says, synchronously.
func (c *Controllers) HandleReport(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	c.mu.Lock()
	respond := c.respond
	c.mu.Unlock()
	var err error
	if respond != nil {
		err = respond(node, req) // may panic, on purpose
	}
	c.record(func() { c.reports = append(c.reports, Report{Node: node, Request: req, Answer: answer}) })
	if errors.Is(err, ErrHold) {
		return
	}
	st := status.Convert(err)
	answer(&edgesyncv1.StatusResult{RequestId: req.GetRequestId(), Code: int32(st.Code()), Message: st.Message()})
}

// SessionEnded implements feed.Reporter.
func (c *Controllers) SessionEnded(node string) {
	c.record(func() { c.ended = append(c.ended, node) })
}

// record changes state under the lock and wakes waiters.
func (c *Controllers) record(f func()) {
	c.mu.Lock()
	f()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// Reports returns the reports received so far.
func (c *Controllers) Reports() []Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Report(nil), c.reports...)
}

// Ended returns the nodes whose sessions ended, in order, once per end.
func (c *Controllers) Ended() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ended...)
}

// WaitReports waits until at least n reports arrived and returns them all.
func (c *Controllers) WaitReports(ctx context.Context, n int) ([]Report, error) {
	var got []Report
	err := c.wait(ctx, func() bool { got = append([]Report(nil), c.reports...); return len(got) >= n })
	if err != nil {
		return got, fmt.Errorf("waiting for %d reports, have %d: %w", n, len(got), err)
	}
	return got, nil
}

// WaitSessionEnded waits until SessionEnded(node) was called at least n
// times in total.
func (c *Controllers) WaitSessionEnded(ctx context.Context, node string, n int) error {
	count := 0
	err := c.wait(ctx, func() bool {
		count = 0
		for _, e := range c.ended {
			if e == node {
				count++
			}
		}
		return count >= n
	})
	if err != nil {
		return fmt.Errorf("waiting for session of %q to end %d times, ended %d: %w", node, n, count, err)
	}
	return nil
}

func (c *Controllers) wait(ctx context.Context, done func() bool) error {
	for {
		c.mu.Lock()
		ok := done()
		changed := c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// ConfigMap returns the APPLY event of a ConfigMap at resourceVersion rv
// (uid "uid-<namespace>-<name>").
func ConfigMap(namespace, name, rv string, data map[string]string) *feed.Object {
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: namespace, Name: name}
	meta := objectMeta(namespace, name, rv)
	return mustEncode(key, meta.GetUid(), rv, false, &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{
		Type:      edgesyncv1.EventType_EVENT_TYPE_APPLY,
		ConfigMap: &corev1pb.ConfigMap{Metadata: meta, Data: data},
	}}})
}

// Pod returns the APPLY event of a pod bound to node at resourceVersion rv
// (uid "uid-<namespace>-<name>").
func Pod(namespace, name, node, rv string) *feed.Object {
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: namespace, Name: name}
	meta := objectMeta(namespace, name, rv)
	return mustEncode(key, meta.GetUid(), rv, false, &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_PodEvent{PodEvent: &edgesyncv1.PodEvent{
		Type: edgesyncv1.EventType_EVENT_TYPE_APPLY,
		Pod: &corev1pb.Pod{Metadata: meta, Spec: &corev1pb.PodSpec{
			NodeName:   proto.String(node),
			Containers: []*corev1pb.Container{{Name: proto.String("main"), Image: proto.String("registry.k8s.io/pause:3.10")}},
		}},
	}}})
}

// Tombstone returns the DELETE event of key (feed.Tombstone, which cannot
// fail for the kinds tests use).
func Tombstone(key feed.Key, uid string) *feed.Object {
	obj, err := feed.Tombstone(key, uid)
	if err != nil {
		panic(err)
	}
	return obj
}

func objectMeta(namespace, name, rv string) *metav1pb.ObjectMeta {
	return &metav1pb.ObjectMeta{
		Namespace:       proto.String(namespace),
		Name:            proto.String(name),
		Uid:             proto.String("uid-" + namespace + "-" + name),
		ResourceVersion: proto.String(rv),
	}
}

func mustEncode(key feed.Key, uid, rv string, deleted bool, msg *edgesyncv1.SyncResponse) *feed.Object {
	obj, err := feed.Encode(key, uid, rv, deleted, msg)
	if err != nil {
		panic(err) // only a programming error in this package gets here
	}
	return obj
}

// Unimplemented returns a Responder that answers every report
// UNIMPLEMENTED.
func Unimplemented() Responder {
	return func(string, *edgesyncv1.SyncRequest) error {
		return status.Error(codes.Unimplemented, "reports are not handled by this test")
	}
}
