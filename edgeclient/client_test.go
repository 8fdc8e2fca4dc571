package edgeclient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"

	"github.com/edgesync/edgesync/edgeclient/backoff"
	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	"github.com/edgesync/edgesync/internal/repo"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(repo.ClientGoLeakOptions(),
		// The controllers' work queues, in the end-to-end tests, end their
		// metrics loop shortly after shutdown.
		goleak.IgnoreAnyFunction("k8s.io/client-go/util/workqueue.(*Typed[...]).updateUnfinishedWorkLoop"))...)
}

func podKey(ns, name string) store.Key {
	return store.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: ns, Name: name}
}

// podObject is the fake server's APPLY event for a pod.
func podObject(ns, name, uid, rv, image string) *fakeObject {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: k8stypes.UID("uid-" + uid), ResourceVersion: rv},
		Spec:       corev1.PodSpec{NodeName: "edge-1", Containers: []corev1.Container{{Name: "main", Image: image}}},
	}
	if uid == "" { // a tombstone carries only namespace and name
		pod = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	}
	pb := &corev1pb.Pod{}
	if err := toProto(pod, pb); err != nil {
		panic(err)
	}
	return &fakeObject{uid: string(pod.UID), rv: rv, msg: &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_PodEvent{
		PodEvent: &edgesyncv1.PodEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Pod: pb},
	}}}
}

// recorder collects the events a client delivers.
type recorder struct {
	mu     sync.Mutex
	events []Event
	fail   map[string]error // namespace/name -> error to return
}

func (r *recorder) on(_ context.Context, ev Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	return r.fail[ev.Key.Namespace+"/"+ev.Key.Name]
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.events {
		out = append(out, fmt.Sprintf("%s %s/%s@%s", ev.Type, ev.Key.Namespace, ev.Key.Name, ev.ResourceVersion))
	}
	r.events = nil
	return out
}

type testClient struct {
	*Client
	rec  *recorder
	stop func()
}

// startClient creates a client of the fake server for node and runs it
// until the test ends (or stop is called).
func startClient(t *testing.T, f *fakeServer, node, storeDir string, run bool, options ...func(*Config)) *testClient {
	t.Helper()
	certFile, keyFile := f.nodeFiles(node)
	rec := &recorder{}
	cfg := Config{
		Server: f.addr, CAFile: f.caFile, CertFile: certFile, KeyFile: keyFile, NodeName: node,
		StoreDir: storeDir, Logger: zaptest.NewLogger(t), AgentVersion: "test",
		Backoff: backoff.Config{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond},
		OnEvent: rec.on,
	}
	for _, o := range options {
		o(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc := &testClient{Client: c, rec: rec, stop: func() {}}
	if run {
		tc.run(t)
	}
	t.Cleanup(func() {
		tc.stop()
		c.Close()
	})
	return tc
}

func (tc *testClient) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tc.Run(ctx) }()
	var once sync.Once
	tc.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}

func waitState(t *testing.T, c *Client, what string, cond func(State) bool) State {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := c.WaitFor(ctx, cond)
	if err != nil {
		t.Fatalf("waiting for %s: %v (state %+v)", what, err, s)
	}
	return s
}

// heldPods describes the pods in the client's store as name@rv.
func heldPods(t *testing.T, c *Client) map[string]string {
	t.Helper()
	pods, err := c.Pods()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pods {
		out[p.Namespace+"/"+p.Name] = p.ResourceVersion + " " + p.Spec.Containers[0].Image
	}
	return out
}

func (f *fakeServer) desiredPods() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]string{}
	for k, o := range f.desired {
		out[k.Namespace+"/"+k.Name] = o.rv + " " + o.msg.GetPodEvent().GetPod().GetSpec().GetContainers()[0].GetImage()
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestSyncResumesWithTheDifference(t *testing.T) {
	f := newFakeServer(t)
	for i := range 3 {
		f.set(podKey("ns", fmt.Sprint("p", i)), podObject("ns", fmt.Sprint("p", i), fmt.Sprint(i), "1", "img:1"))
	}
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	s := waitState(t, c.Client, "first sync", func(s State) bool { return s.Synced })
	if s.ObjectsHeld != 3 || s.LastSyncSent != 3 {
		t.Fatalf("after first sync: held %d, server sent %d; want 3 and 3", s.ObjectsHeld, s.LastSyncSent)
	}
	if got := c.rec.take(); len(got) != 3 || !strings.HasPrefix(got[0], "ADDED ") || !strings.HasPrefix(got[2], "ADDED ") {
		t.Errorf("events of first sync = %v, want three ADDED", got)
	}

	// Offline: p0 changes, p1 goes away, p3 appears, p2 stays.
	f.stop()
	f.set(podKey("ns", "p0"), podObject("ns", "p0", "0", "2", "img:2"))
	f.set(podKey("ns", "p1"), nil)
	f.set(podKey("ns", "p3"), podObject("ns", "p3", "3", "1", "img:1"))
	f.restart()

	s = waitState(t, c.Client, "second sync", func(s State) bool { return s.Connections == 2 && s.Synced })
	if s.LastSyncSent != 2 || s.LastSyncDeleted != 1 {
		t.Errorf("resume sent %d objects and %d deletes, want only the difference: 2 and 1", s.LastSyncSent, s.LastSyncDeleted)
	}
	if got, want := heldPods(t, c.Client), f.desiredPods(); !equalMaps(got, want) {
		t.Errorf("store holds %v, server says %v", got, want)
	}
	got := map[string]bool{}
	for _, e := range c.rec.take() {
		got[e] = true
	}
	for _, want := range []string{"MODIFIED ns/p0@2", "DELETED ns/p1@1", "ADDED ns/p3@1"} {
		if !got[want] {
			t.Errorf("missing event %q in %v", want, got)
		}
	}
	f.mu.Lock()
	hello := f.hellos[len(f.hellos)-1]
	f.mu.Unlock()
	if n := len(hello.GetHeldObjects()); n != 3 {
		t.Errorf("second Hello listed %d held objects, want 3", n)
	}
}

func TestKillMidStreamWhileObjectsChange(t *testing.T) {
	f := newFakeServer(t)
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	changes := 0
	for round := range 20 {
		// Kill a stream that is up, in the middle of a burst of changes.
		waitState(t, c.Client, "connection", func(s State) bool { return s.Connections > uint64(round) && s.Connected })
		for i := range 5 {
			name := fmt.Sprint("p", (round*3+i)%12)
			if (round+i)%7 == 0 {
				f.set(podKey("ns", name), nil)
			} else {
				f.set(podKey("ns", name), podObject("ns", name, name, fmt.Sprint(round*10+i), fmt.Sprint("img:", round)))
				changes++
			}
			if i == 2 {
				f.kill()
			}
		}
	}
	waitState(t, c.Client, "a sync after the last kill", func(s State) bool { return s.Connections == 21 && s.Synced })
	// Wait until the client acknowledged what the server sent last.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	f.waitFor(ctx, "store to match", func() bool {
		return equalMaps(heldPodsNoFail(c.Client), desiredLocked(f))
	})
	s := c.State()
	if s.ObjectsReceived > uint64(changes) {
		t.Errorf("received %d objects for %d changes: unchanged objects were sent again", s.ObjectsReceived, changes)
	}
}

func heldPodsNoFail(c *Client) map[string]string {
	pods, _ := c.Pods()
	out := map[string]string{}
	for _, p := range pods {
		out[p.Namespace+"/"+p.Name] = p.ResourceVersion + " " + p.Spec.Containers[0].Image
	}
	return out
}

func desiredLocked(f *fakeServer) map[string]string {
	out := map[string]string{}
	for k, o := range f.desired {
		out[k.Namespace+"/"+k.Name] = o.rv + " " + o.msg.GetPodEvent().GetPod().GetSpec().GetContainers()[0].GetImage()
	}
	return out
}

func TestOfflineStartServesTheStore(t *testing.T) {
	f := newFakeServer(t)
	dir := t.TempDir()
	f.set(podKey("ns", "web"), podObject("ns", "web", "w", "5", "nginx:1"))
	first := startClient(t, f, "edge-1", dir, true)
	waitState(t, first.Client, "first sync", func(s State) bool { return s.Synced })
	first.stop()
	first.Close()

	f.stop()
	f.set(podKey("ns", "web"), podObject("ns", "web", "w", "6", "nginx:2"))
	c := startClient(t, f, "edge-1", dir, false)
	pod, err := c.Pod("ns", "web")
	if err != nil || pod == nil || pod.ResourceVersion != "5" {
		t.Fatalf("offline Pod(ns/web) = %v, %v; want version 5 from the store", pod, err)
	}
	c.run(t)
	waitState(t, c.Client, "a failed attempt", func(s State) bool { return s.Reconnects > 0 })
	if s := c.State(); s.Connected || s.ObjectsHeld != 1 {
		t.Fatalf("with no server: connected=%v held=%d, want disconnected holding 1", s.Connected, s.ObjectsHeld)
	}
	f.restart()
	waitState(t, c.Client, "sync", func(s State) bool { return s.Synced })
	if pod, _ := c.Pod("ns", "web"); pod.ResourceVersion != "6" || pod.Spec.Containers[0].Image != "nginx:2" {
		t.Errorf("after sync the store holds %s %s, want version 6 nginx:2", pod.ResourceVersion, pod.Spec.Containers[0].Image)
	}
}

func TestReportsWhileDisconnected(t *testing.T) {
	f := newFakeServer(t)
	f.stop()
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	report := func(name string, phase corev1.PodPhase) *Report {
		r, err := c.ReportPodStatus("ns", name, "uid-"+name, &corev1.PodStatus{Phase: phase})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a1 := report("a", corev1.PodPending)
	a2 := report("a", corev1.PodRunning)
	b := report("b", corev1.PodRunning)
	if a1.ID() == 0 || a1.ID() == a2.ID() || a2.ID() == b.ID() {
		t.Errorf("request ids %d %d %d are not unique and non-zero", a1.ID(), a2.ID(), b.ID())
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := a1.Wait(ctx); !errors.Is(err, ErrSuperseded) {
		t.Errorf("first report of pod a: %v, want ErrSuperseded", err)
	}
	if s := c.State(); s.PendingReports != 2 {
		t.Errorf("pending reports while offline = %d, want 2", s.PendingReports)
	}
	f.restart()
	for _, r := range []*Report{a2, b} {
		res, err := r.Wait(ctx)
		if err != nil || res.GetRequestId() != r.ID() {
			t.Errorf("report %d: result %v, %v", r.ID(), res, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	phases := map[string][]string{}
	for _, r := range f.reports {
		if ps := r.GetPodStatus(); ps != nil {
			phases[ps.GetName()] = append(phases[ps.GetName()], ps.GetStatus().GetPhase())
		}
	}
	if fmt.Sprint(phases["a"]) != "[Running]" || fmt.Sprint(phases["b"]) != "[Running]" {
		t.Errorf("server received pod phases %v, want only the latest per pod", phases)
	}
}

func TestRefusedReport(t *testing.T) {
	f := newFakeServer(t)
	f.mu.Lock()
	f.refuse = codes.PermissionDenied
	f.mu.Unlock()
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	r, err := c.ReportPodStatus("ns", "other", "u", &corev1.PodStatus{Phase: corev1.PodRunning})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Wait(t.Context())
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("Wait = %v, want PermissionDenied", err)
	}
}

func TestNodeStatusSentOnlyWhenChanged(t *testing.T) {
	f := newFakeServer(t)
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	st := &corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}}
	r1, err := c.ReportNodeStatus(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	st.Conditions[0].LastHeartbeatTime = metav1.NewTime(time.Now().Add(time.Minute))
	r2, _ := c.ReportNodeStatus(st)
	if r2 != r1 {
		t.Errorf("an unchanged status (only the heartbeat time moved) was reported again")
	}
	st.Conditions[0].Status = corev1.ConditionFalse
	r3, _ := c.ReportNodeStatus(st)
	if r3 == r1 {
		t.Fatal("a changed status was not reported")
	}
	if _, err := r3.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.reports {
		if r.GetNodeStatus() != nil {
			n++
		}
	}
	if n != 2 {
		t.Errorf("server received %d node statuses, want 2", n)
	}
}

func TestNackKeepsGoing(t *testing.T) {
	f := newFakeServer(t)
	f.set(podKey("ns", "bad"), podObject("ns", "bad", "b", "3", "img"))
	f.set(podKey("ns", "good"), podObject("ns", "good", "g", "4", "img"))
	c := startClient(t, f, "edge-1", t.TempDir(), false)
	c.rec.fail = map[string]error{"ns/bad": errors.New("image pull refused")}
	c.run(t)
	waitState(t, c.Client, "sync", func(s State) bool { return s.Synced })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	f.waitFor(ctx, "the nack and the ack of everything", func() bool { return len(f.nacks) == 1 && f.acked >= 4 })
	f.mu.Lock()
	n := f.nacks[0]
	f.mu.Unlock()
	if n.GetObject().GetName() != "bad" || n.GetObject().GetResourceVersion() != "3" || n.GetReason() != "image pull refused" {
		t.Errorf("nack = %v", n)
	}
	if s := c.State(); s.Nacks != 1 || s.ObjectsHeld != 2 {
		t.Errorf("state nacks=%d held=%d, want 1 and 2", s.Nacks, s.ObjectsHeld)
	}
}

func TestRotatedCertificateUsedOnNextConnection(t *testing.T) {
	f := newFakeServer(t)
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	waitState(t, c.Client, "connection", func(s State) bool { return s.Synced })

	kp, err := f.ca.IssueNode("edge-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := kp.WriteFiles(c.cfg.CertFile, c.cfg.KeyFile, true); err != nil {
		t.Fatal(err)
	}
	cert, err := kp.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	f.kill()
	waitState(t, c.Client, "reconnection", func(s State) bool { return s.Connections >= 2 && s.Synced })
	f.mu.Lock()
	defer f.mu.Unlock()
	first, last := f.serials[0], f.serials[len(f.serials)-1]
	if want := cert.Leaf.SerialNumber.String(); last != want || first == last {
		t.Errorf("serials used: first %s, last %s; want last = rotated %s", first, last, want)
	}
}

func TestSilentStreamIsAbandoned(t *testing.T) {
	f := newFakeServer(t)
	f.mu.Lock()
	f.noAnswer = true // not even heartbeats are answered: a half-open link
	f.mu.Unlock()
	certFile, keyFile := f.nodeFiles("edge-1")
	c, err := New(Config{
		Server: f.addr, CAFile: f.caFile, CertFile: certFile, KeyFile: keyFile, NodeName: "edge-1",
		Store: store.NewMemory(), Logger: zaptest.NewLogger(t), LivenessTimeout: 100 * time.Millisecond,
		Backoff: backoff.Config{Initial: time.Millisecond, Max: 10 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	tc := &testClient{Client: c}
	tc.run(t)
	defer tc.stop()
	s := waitState(t, c, "a second connection", func(s State) bool { return s.Connections >= 2 })
	if !strings.Contains(s.LastError, "nothing received") {
		t.Errorf("last error %q does not say the stream went silent", s.LastError)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	heartbeats := 0
	for _, r := range f.reports {
		if r.GetHeartbeat() != nil {
			heartbeats++
		}
	}
	if heartbeats == 0 {
		t.Error("no heartbeat was sent on connecting")
	}
}

func TestOversizedReportFailsAlone(t *testing.T) {
	f := newFakeServer(t)
	f.mu.Lock()
	f.maxBytes = 512
	f.mu.Unlock()
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	big := &corev1.PodStatus{Message: strings.Repeat("x", 1024)}
	r, err := c.ReportPodStatus("ns", "big", "u", big)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(t.Context()); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized report: %v, want ResourceExhausted", err)
	}
	small, _ := c.ReportPodStatus("ns", "small", "u", &corev1.PodStatus{Phase: corev1.PodRunning})
	if _, err := small.Wait(t.Context()); err != nil {
		t.Errorf("a normal report after the oversized one: %v", err)
	}
	if s := c.State(); s.Connections != 1 {
		t.Errorf("%d connections: the oversized report broke the stream", s.Connections)
	}
}

// Control messages are not held by the server's window, so the client does
// not acknowledge them on their own: answers to reports (every heartbeat
// has one) cost no extra message, and the next object event's cumulative
// Ack covers them.
func TestStatusResultsRideOnTheNextObjectAck(t *testing.T) {
	f := newFakeServer(t)
	f.set(podKey("ns", "a"), podObject("ns", "a", "ua", "1", "img"))
	c := startClient(t, f, "edge-1", t.TempDir(), false)
	c.run(t)
	waitState(t, c.Client, "sync", func(s State) bool { return s.Synced })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	f.waitFor(ctx, "the initial pod acknowledged", func() bool { return f.acked >= 2 })
	f.mu.Lock()
	before := f.ackMsgs
	f.mu.Unlock()

	for _, name := range []string{"a", "b", "c"} {
		r, err := c.ReportPodStatus("ns", name, "u"+name, &corev1.PodStatus{Phase: corev1.PodRunning})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	f.set(podKey("ns", "b"), podObject("ns", "b", "ub", "2", "img"))
	f.waitFor(ctx, "everything acknowledged", func() bool { return f.acked == f.sent && f.applies == 2 })

	f.mu.Lock()
	defer f.mu.Unlock()
	if got := f.ackMsgs - before; got != 1 {
		t.Errorf("client sent %d Acks for three answered reports and one pod, want 1 (the pod's, covering the answers)", got)
	}
}

// Object events arriving one at a time are covered by cumulative Acks sent
// when half the window is unacknowledged (or after AckDelay), not by one
// Ack each.
func TestTrickleOfEventsSharesAcks(t *testing.T) {
	f := newFakeServer(t)
	c := startClient(t, f, "edge-1", t.TempDir(), false, func(cfg *Config) { cfg.AckDelay = time.Hour })
	c.run(t)
	waitState(t, c.Client, "sync", func(s State) bool { return s.Synced })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// The heartbeat sent on Welcome is answered first, so that nothing
	// but pods is numbered from here on.
	f.waitFor(ctx, "the first heartbeat", func() bool { return len(f.reports) > 0 })
	for c.State().PendingReports > 0 {
		if ctx.Err() != nil {
			t.Fatal("the first heartbeat was never answered")
		}
		time.Sleep(time.Millisecond)
	}
	f.mu.Lock()
	acksBefore, acked, sent := f.ackMsgs, f.acked, f.sent
	f.mu.Unlock()

	// The fake server's window is 8, so with the delay out of reach the
	// client acknowledges every 4 sequences after its last Ack. Send
	// enough pods (5 to 8) for the last one to land on such a point.
	const half = 4
	pods := half - int(sent-acked)%half + half
	for i := range pods {
		name := fmt.Sprint("p", i)
		f.set(podKey("ns", name), podObject("ns", name, "u"+name, "1", "img"))
		waitState(t, c.Client, "pod "+name+" applied", func(s State) bool { return s.ObjectsReceived == uint64(i+1) })
	}
	f.waitFor(ctx, "every pod acknowledged", func() bool { return f.acked == f.sent })

	want := (int(sent-acked)+pods)/half - int(sent-acked)/half
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := f.ackMsgs - acksBefore; got != want {
		t.Errorf("client sent %d Acks for %d pods arriving one at a time, want %d (one per half window)", got, pods, want)
	}
}

// When the server answers a heartbeat NOT_FOUND (the node's Node was
// deleted), the client registers the node again by itself, with the latest
// node status it reported, and heartbeats are accepted again.
func TestNodeRegisteredAgainAfterItsNodeIsDeleted(t *testing.T) {
	f := newFakeServer(t)
	// Guarded by f.mu, as answerFor runs with it held.
	registered := true
	var registrations []*edgesyncv1.NodeRegistration
	heartbeats := map[codes.Code]int{}
	f.mu.Lock()
	f.answerFor = func(req *edgesyncv1.SyncRequest) codes.Code {
		code := codes.OK
		switch m := req.GetMessage().(type) {
		case *edgesyncv1.SyncRequest_NodeRegistration:
			registrations = append(registrations, m.NodeRegistration)
			registered = true
		case *edgesyncv1.SyncRequest_Heartbeat, *edgesyncv1.SyncRequest_NodeStatus:
			if !registered {
				code = codes.NotFound
			}
		}
		if req.GetHeartbeat() != nil {
			heartbeats[code]++
		}
		return code
	}
	f.mu.Unlock()
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	reg, err := c.RegisterNode(NodeRegistration{Labels: map[string]string{"site": "a"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	st := &corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "Latest"}}}
	r, err := c.ReportNodeStatus(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}

	// The Node is deleted; the server ends the stream and the client
	// connects again, sending a heartbeat at once.
	f.mu.Lock()
	registered = false
	f.mu.Unlock()
	f.kill()
	f.waitFor(t.Context(), "a second registration after a heartbeat refused NOT_FOUND", func() bool {
		return heartbeats[codes.NotFound] == 1 && len(registrations) == 2
	})
	f.mu.Lock()
	again := registrations[1]
	ok := heartbeats[codes.OK]
	f.mu.Unlock()
	// The next stream's heartbeat is accepted.
	f.kill()
	f.waitFor(t.Context(), "an accepted heartbeat after registering again", func() bool {
		return heartbeats[codes.OK] > ok
	})
	if again.GetLabels()["site"] != "a" {
		t.Errorf("registered again with labels %v, want the original ones", again.GetLabels())
	}
	if cs := again.GetStatus().GetConditions(); len(cs) != 1 || cs[0].GetReason() != "Latest" {
		t.Errorf("registered again with conditions %v, want the latest reported status", cs)
	}
}

// A node registering sends no heartbeat until its registration is answered
// (the server would refuse it NOT_FOUND while the Node does not exist yet),
// then one at once.
func TestNoHeartbeatBeforeRegistrationIsAnswered(t *testing.T) {
	f := newFakeServer(t)
	f.mu.Lock()
	f.noAnswer = true
	f.mu.Unlock()
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	if _, err := c.RegisterNode(NodeRegistration{}); err != nil {
		t.Fatal(err)
	}
	received := func(pred func(*edgesyncv1.SyncRequest) bool) int {
		n := 0
		for _, r := range f.reports {
			if pred(r) {
				n++
			}
		}
		return n
	}
	isRegistration := func(r *edgesyncv1.SyncRequest) bool { return r.GetNodeRegistration() != nil }
	isHeartbeat := func(r *edgesyncv1.SyncRequest) bool { return r.GetHeartbeat() != nil }
	f.waitFor(t.Context(), "the unanswered registration", func() bool { return received(isRegistration) == 1 })

	// The next stream answers: the registration is sent again, and once
	// it is answered the first heartbeat follows.
	f.mu.Lock()
	f.noAnswer = false
	f.mu.Unlock()
	f.kill()
	f.waitFor(t.Context(), "a heartbeat", func() bool { return received(isHeartbeat) > 0 })
	f.mu.Lock()
	defer f.mu.Unlock()
	var kinds []string
	for _, r := range f.reports {
		switch {
		case isRegistration(r):
			kinds = append(kinds, "registration")
		case isHeartbeat(r):
			kinds = append(kinds, "heartbeat")
		}
	}
	if len(kinds) < 3 || kinds[0] != "registration" || kinds[1] != "registration" || kinds[2] != "heartbeat" {
		t.Errorf("the server received %v, want the unanswered registration, the registration again, then heartbeats", kinds)
	}
}
