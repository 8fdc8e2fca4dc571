package controllers_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"net/http"

	"github.com/edgesync/edgesync/controllers"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, repo.ClientGoLeakOptions()...)
}

// recorder is a feed.Publisher that records what each node was sent.
type recorder struct {
	mu      sync.Mutex // guards got and changed
	got     map[string][]*feed.Object
	changed chan struct{} // closed and replaced on every Publish
}

func newRecorder() *recorder {
	return &recorder{got: make(map[string][]*feed.Object), changed: make(chan struct{})}
}

func (r *recorder) Publish(node string, obj *feed.Object) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got[node] = append(r.got[node], obj)
	close(r.changed)
	r.changed = make(chan struct{})
}

// sent returns a copy of what node was sent, in order.
func (r *recorder) sent(node string) []*feed.Object {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*feed.Object(nil), r.got[node]...)
}

// last returns the last object sent to node for key, nil when none.
func (r *recorder) last(node string, key feed.Key) *feed.Object {
	objs := r.sent(node)
	for i := len(objs) - 1; i >= 0; i-- {
		if objs[i].Key == key {
			return objs[i]
		}
	}
	return nil
}

// waitFor waits until cond holds on what node was sent.
func (r *recorder) waitFor(t *testing.T, node, what string, cond func(sent []*feed.Object) bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		r.mu.Lock()
		ok := cond(r.got[node])
		ch := r.changed
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("node %s was not sent %s within 30s; it was sent %v", node, what, keys(r.sent(node)))
		}
	}
}

// waitApplied waits until the last event for key on node is an APPLY that
// satisfies cond (nil: any).
func (r *recorder) waitApplied(t *testing.T, node string, key feed.Key, cond func(*edgesyncv1.SyncResponse) bool) *edgesyncv1.SyncResponse {
	t.Helper()
	var msg *edgesyncv1.SyncResponse
	r.waitFor(t, node, "APPLY "+key.String(), func(sent []*feed.Object) bool {
		for i := len(sent) - 1; i >= 0; i-- {
			if sent[i].Key != key {
				continue
			}
			if sent[i].Deleted {
				return false
			}
			msg = decode(t, sent[i])
			return cond == nil || cond(msg)
		}
		return false
	})
	return msg
}

// waitDeleted waits until the last event for key on node is a DELETE.
func (r *recorder) waitDeleted(t *testing.T, node string, key feed.Key) {
	t.Helper()
	r.waitFor(t, node, "DELETE "+key.String(), func(sent []*feed.Object) bool {
		for i := len(sent) - 1; i >= 0; i-- {
			if sent[i].Key == key {
				return sent[i].Deleted
			}
		}
		return false
	})
}

func keys(objs []*feed.Object) []string {
	var out []string
	for _, o := range objs {
		s := o.Key.String()
		if o.Deleted {
			s = "DELETE " + s
		}
		out = append(out, s)
	}
	return out
}

func decode(t testing.TB, obj *feed.Object) *edgesyncv1.SyncResponse {
	t.Helper()
	msg := &edgesyncv1.SyncResponse{}
	if err := proto.Unmarshal(obj.Payload, msg); err != nil {
		t.Fatalf("decode %s: %v", obj.Key, err)
	}
	return msg
}

// start runs controllers for the devcluster, publishing to pub, until the
// test ends and waits for their caches.
func start(t *testing.T, cfg controllers.Config, pub feed.Publisher) *controllers.Controllers {
	t.Helper()
	ctrls := build(t, cfg)
	run(t, ctrls, pub)
	return ctrls
}

// build builds controllers for the devcluster.
func build(t *testing.T, cfg controllers.Config) *controllers.Controllers {
	t.Helper()
	if cfg.RESTConfig == nil {
		cfg.RESTConfig = testcluster.RESTConfig(t)
	}
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	ctrls, err := controllers.New(cfg)
	if err != nil {
		t.Fatalf("controllers.New: %v", err)
	}
	return ctrls
}

// run runs ctrls, publishing to pub, until the test ends and waits for
// their caches.
func run(t *testing.T, ctrls *controllers.Controllers, pub feed.Publisher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrls.Run(ctx, pub) }()
	var runErr error
	ended := false
	t.Cleanup(func() {
		cancel()
		if !ended {
			runErr = <-done
		}
		if runErr != nil && !errors.Is(runErr, context.Canceled) {
			t.Errorf("Run: %v", runErr)
		}
	})
	select {
	case <-ctrls.Synced():
	case runErr = <-done:
		ended = true
		t.Fatalf("Run returned before the caches synced: %v", runErr)
	case <-time.After(60 * time.Second):
		t.Fatal("caches did not sync within 60s")
	}
}

// edgeNode creates an edge Node and deletes it when the test ends.
func edgeNode(t *testing.T, client kubernetes.Interface, prefix string) string {
	t.Helper()
	name := testcluster.UniqueName(prefix)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{controllers.DefaultEdgeLabel: ""}}}
	if _, err := client.CoreV1().Nodes().Create(t.Context(), node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	deleteNodeAtCleanup(t, client, name)
	return name
}

func deleteNodeAtCleanup(t *testing.T, client kubernetes.Interface, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	})
}

// eventually polls cond (observing the API server) until it holds.
func eventually(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not happen within 30s (last error: %v)", what, lastErr)
}

// answers collects StatusResults.
type answers chan *edgesyncv1.StatusResult

func (a answers) answer(r *edgesyncv1.StatusResult) { a <- r }

func (a answers) wait(t *testing.T) *edgesyncv1.StatusResult {
	t.Helper()
	select {
	case r := <-a:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("report not answered within 30s")
		return nil
	}
}

// restConfig returns the devcluster config with a transport wrapper.
func restConfigWith(t *testing.T, wrap func(http.RoundTripper) http.RoundTripper) *rest.Config {
	cfg := rest.CopyConfig(testcluster.RESTConfig(t))
	cfg.Wrap(wrap)
	return cfg
}
