package router

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// fakeMessenger records what is sent to each node; nodes in down refuse.
type fakeMessenger struct {
	mu   sync.Mutex
	sent map[string][]*edgesyncv1.SyncResponse
	down map[string]bool
}

func (f *fakeMessenger) SendMessage(node string, msg *edgesyncv1.SyncResponse) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[node] {
		return errors.New("not connected")
	}
	f.sent[node] = append(f.sent[node], msg)
	return nil
}

func (f *fakeMessenger) deliveries(node string) []*edgesyncv1.RouteDelivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*edgesyncv1.RouteDelivery
	for _, m := range f.sent[node] {
		if d := m.GetRouteDelivery(); d != nil {
			out = append(out, d)
		}
	}
	return out
}

func mustRule(t *testing.T, ns, manifest string, eps map[string]endpoint) *rule {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest), &u.Object); err != nil {
		t.Fatal(err)
	}
	u.SetNamespace(ns)
	return resolve(u, eps)
}

var testEndpoints = map[string]endpoint{
	"rest": {typ: TypeRest}, "bus": {typ: TypeEventBus}, "svc": {typ: TypeServiceBus, properties: map[string]string{"service_port": "8080"}},
}

// newTestRouter is a Router without Kubernetes: rules are given, status
// counts stay in memory.
func newTestRouter(t *testing.T, rules ...*rule) (*Router, *fakeMessenger) {
	t.Helper()
	f := &fakeMessenger{sent: map[string][]*edgesyncv1.SyncResponse{}, down: map[string]bool{}}
	r := &Router{queues: map[string]*lockedQueue{}, counts: map[ruleKey]*counter{}, subs: map[string][]string{}, seen: newSeenIDs(16), up: make(chan upJob, 16)}
	r.cfg.Messenger = f
	r.cfg.defaults()
	r.cfg.Window = 2
	r.cfg.NodeBuffer = 4
	var err error
	if r.metrics, err = newMetrics(nil, r); err != nil {
		t.Fatal(err)
	}
	r.ix.Store(buildIndex(rules))
	return r, f
}

func TestResolveAndMatch(t *testing.T) {
	a := mustRule(t, "ns", `{"metadata":{"name":"a"},"spec":{"source":"rest","sourceResource":{"path":"/a"},"target":"bus","targetResource":{"topic":"t"}}}`, testEndpoints)
	ab := mustRule(t, "ns", `{"metadata":{"name":"ab"},"spec":{"source":"rest","sourceResource":{"path":"/a/{x}/c"},"target":"svc","targetResource":{"path":"/p"}}}`, testEndpoints)
	bad := mustRule(t, "ns", `{"metadata":{"name":"bad"},"spec":{"source":"rest","sourceResource":{"path":"/b"},"target":"missing","targetResource":{"topic":"t"}}}`, testEndpoints)
	if bad.problem == "" || ab.servicePort != 8080 || a.problem != "" {
		t.Fatalf("resolve: a %+v, ab %+v, bad %+v", a, ab, bad)
	}
	ix := buildIndex([]*rule{a, ab, bad})
	for _, tc := range []struct {
		ns, path string
		want     string
		more     []string
	}{
		{"ns", "/a", "a", nil},
		{"ns", "/a/b", "a", []string{"b"}},
		{"ns", "/a/b/c/d", "ab", []string{"d"}},
		{"ns", "/b", "", nil},    // its target does not exist
		{"other", "/a", "", nil}, // another namespace's rules
		{"ns", "/ab", "", nil},   // segments, not prefixes of strings
		{"ns", "/x/a", "", nil},
	} {
		rl, more := ix.matchRest(tc.ns, splitPath(tc.path))
		got := ""
		if rl != nil {
			got = rl.key.name
		}
		if got != tc.want || fmt.Sprint(more) != fmt.Sprint(tc.more) {
			t.Errorf("match %s %s = %q %v, want %q %v", tc.ns, tc.path, got, more, tc.want, tc.more)
		}
	}
}

func TestDeliveriesInOrderWithinWindowAndResentAfterReconnect(t *testing.T) {
	rl := mustRule(t, "ns", `{"metadata":{"name":"a"},"spec":{"source":"rest","sourceResource":{"path":"/a"},"target":"bus","targetResource":{"topic":"t"}}}`, testEndpoints)
	r, f := newTestRouter(t, rl)
	if _, err := r.deliver(rl, "n1", "t", []byte("x")); !errors.Is(err, ErrOffline) {
		t.Fatalf("a node never connected here: %v, want ErrOffline", err)
	}
	r.SessionStarted("n1")
	var msgs []*message
	for i := range 4 {
		m, err := r.deliver(rl, "n1", "t", []byte(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	if _, err := r.deliver(rl, "n1", "t", []byte("5")); !errors.Is(err, ErrBufferFull) {
		t.Fatalf("a fifth message with a buffer of 4: %v, want ErrBufferFull", err)
	}
	if d := f.deliveries("n1"); len(d) != 2 || string(d[0].GetBody()) != "0" || string(d[1].GetBody()) != "1" {
		t.Fatalf("sent %v, want the first two (window 2)", d)
	}
	// Another node cannot answer n1's deliveries.
	r.RouteResult("n2", &edgesyncv1.RouteResult{Id: msgs[0].d.GetId()})
	if len(f.deliveries("n1")) != 2 {
		t.Fatal("an answer from another node freed the window")
	}
	// The stream breaks: unanswered deliveries are sent again, in order.
	r.SessionEnded("n1")
	r.SessionStarted("n1")
	d := f.deliveries("n1")
	if len(d) != 4 || d[2].GetId() != msgs[0].d.GetId() || d[3].GetId() != msgs[1].d.GetId() {
		t.Fatalf("after reconnecting sent %v, want 0 and 1 again", d)
	}
	r.RouteResult("n1", &edgesyncv1.RouteResult{Id: msgs[0].d.GetId()})
	r.RouteResult("n1", &edgesyncv1.RouteResult{Id: msgs[1].d.GetId(), Error: "broker down"})
	if o := <-msgs[0].done; o.err != nil || o.res.GetError() != "" {
		t.Errorf("message 0: %+v", o)
	}
	if d = f.deliveries("n1"); len(d) != 6 || string(d[4].GetBody()) != "2" || string(d[5].GetBody()) != "3" {
		t.Fatalf("after two answers sent %v, want 2 and 3 next", d)
	}
	if c := r.counts[rl.key]; c.success != 1 || c.fail != 1 || len(c.errors) != 1 {
		t.Errorf("status counts %+v, want one success and one failure with its error", c)
	}
}

func TestExpiredMessagesAreDropped(t *testing.T) {
	rl := mustRule(t, "ns", `{"metadata":{"name":"a"},"spec":{"source":"rest","sourceResource":{"path":"/a"},"target":"bus","targetResource":{"topic":"t"}}}`, testEndpoints)
	r, f := newTestRouter(t, rl)
	r.cfg.MessageTTL = time.Minute
	r.SessionStarted("n1")
	r.SessionEnded("n1")
	m, err := r.deliver(rl, "n1", "t", []byte("late"))
	if err != nil {
		t.Fatal(err)
	}
	r.sweep(time.Now().Add(2 * time.Minute))
	if o := <-m.done; !errors.Is(o.err, ErrExpired) {
		t.Fatalf("outcome %+v, want ErrExpired", o)
	}
	r.SessionStarted("n1")
	if d := f.deliveries("n1"); len(d) != 0 {
		t.Fatalf("an expired message was sent: %v", d)
	}
}

func TestUpwardOnlyFromTheRulesNode(t *testing.T) {
	rl := mustRule(t, "ns", `{"metadata":{"name":"up"},"spec":{"source":"bus","sourceResource":{"topic":"up","node_name":"n1"},"target":"rest","targetResource":{"resource":"http://127.0.0.1:1/"}}}`,
		map[string]endpoint{"bus": {typ: TypeEventBus}, "rest": {typ: TypeRest}})
	r, _ := newTestRouter(t, rl)
	if got := r.ix.Load().topicsOf("n1"); fmt.Sprint(got) != "[ns/up]" {
		t.Fatalf("n1 subscribes to %v, want [ns/up]", got)
	}
	for _, tc := range []struct {
		node, topic string
		want        codes.Code
	}{
		{"n2", "ns/up", codes.NotFound}, // the rule names n1
		{"n1", "ns/other", codes.NotFound},
		{"n1", "ns/up", codes.OK}, // queued for the workers: no answer yet
	} {
		var got *edgesyncv1.StatusResult
		r.HandleReport(tc.node, &edgesyncv1.SyncRequest{RequestId: 7, Message: &edgesyncv1.SyncRequest_RouteMessage{RouteMessage: &edgesyncv1.RouteMessage{Id: "m", Topic: tc.topic}}},
			func(res *edgesyncv1.StatusResult) { got = res })
		if tc.want == codes.OK {
			if got != nil || len(r.up) != 1 {
				t.Errorf("%s on %s: answered %v, want it queued", tc.node, tc.topic, got)
			}
			continue
		}
		if got == nil || codes.Code(got.GetCode()) != tc.want {
			t.Errorf("%s on %s: %v, want %s", tc.node, tc.topic, got, tc.want)
		}
	}
}
