package localapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/internal/repo"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(repo.ClientGoLeakOptions(),
		// The controllers' work queues, in the end-to-end tests, end their
		// metrics loop shortly after shutdown.
		goleak.IgnoreAnyFunction("k8s.io/client-go/util/workqueue.(*Typed[...]).updateUnfinishedWorkLoop"))...)
}

// fakeReporter stands in for the edgeclient: what the node holds, and the
// reports it is handed.
type fakeReporter struct {
	mu        sync.Mutex
	held      []edgeclient.Object
	connected bool
	refuse    error // the cloud's answer to every report
	reports   []string
	events    []edgeclient.EventReport
	podStatus []*corev1.PodStatus
	nodeSt    []*corev1.NodeStatus
	regs      []edgeclient.NodeRegistration
}

type answered struct{ err error }

func (a answered) Wait(context.Context) (*edgesyncv1.StatusResult, error) {
	return &edgesyncv1.StatusResult{}, a.err
}

func (f *fakeReporter) List(edgesyncv1.Kind) ([]edgeclient.Object, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held, nil
}

func (f *fakeReporter) State() edgeclient.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return edgeclient.State{Connected: f.connected}
}

func (f *fakeReporter) record(what string) (waiter, error) {
	f.reports = append(f.reports, what)
	return answered{f.refuse}, nil
}

func (f *fakeReporter) RegisterNode(reg edgeclient.NodeRegistration) (waiter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.regs = append(f.regs, reg)
	return f.record("registration")
}

func (f *fakeReporter) ReportNodeStatus(st *corev1.NodeStatus) (waiter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodeSt = append(f.nodeSt, st)
	return f.record("node status")
}

func (f *fakeReporter) ReportPodStatus(ns, name, uid string, st *corev1.PodStatus) (waiter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.podStatus = append(f.podStatus, st)
	return f.record("pod status " + ns + "/" + name + " " + uid)
}

func (f *fakeReporter) Heartbeat() (waiter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.record("heartbeat")
}

func (f *fakeReporter) ReportEvent(ev edgeclient.EventReport) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, ev)
	f.reports = append(f.reports, "event "+ev.Reason)
	return nil
}

func (f *fakeReporter) sent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reports...)
}

const testNode = "edge-1"

// fixture is a local API over real TLS with the generated credentials,
// and clientsets as the kubelet would have them.
type fixture struct {
	srv      *Server
	fake     *fakeReporter
	creds    *Credentials
	url      string
	json     kubernetes.Interface
	protobuf kubernetes.Interface
}

func newFixture(t *testing.T, held ...edgeclient.Object) *fixture {
	t.Helper()
	fake := &fakeReporter{held: held, connected: true}
	creds, err := EnsureCredentials(filepath.Join(t.TempDir(), "localapi"), testNode)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := newServer(testNode, fake, Options{Credentials: creds, Logger: zaptest.NewLogger(t), TokenWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	f := &fixture{srv: srv, fake: fake, creds: creds, url: "https://" + ln.Addr().String()}
	f.json = f.clientset(t, "application/json")
	f.protobuf = f.clientset(t, "application/vnd.kubernetes.protobuf")
	return f
}

// clientset builds a client from the kubeconfig the agent writes.
func (f *fixture) clientset(t *testing.T, contentType string) kubernetes.Interface {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := f.creds.WriteKubeconfig(path, f.url); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	// client-go would reload certificate files from a goroutine that
	// lives as long as the process: hand it their contents.
	if cfg.CertData, err = os.ReadFile(cfg.CertFile); err != nil {
		t.Fatal(err)
	}
	if cfg.KeyData, err = os.ReadFile(cfg.KeyFile); err != nil {
		t.Fatal(err)
	}
	cfg.CertFile, cfg.KeyFile = "", ""
	cfg.ContentType = contentType
	if contentType != "application/json" {
		cfg.AcceptContentTypes = contentType + ",application/json"
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.CloseIdleConnections)
	cs, err := kubernetes.NewForConfigAndClient(cfg, hc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func pod(ns, name string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), ResourceVersion: "77"},
		Spec: corev1.PodSpec{NodeName: testNode, ServiceAccountName: "default",
			Containers: []corev1.Container{{Name: "main", Image: "busybox"}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func usesSecret(name string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: name}}})
	}
}

func secret(ns, name string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: "uid-" + types.UID(name)}, Data: map[string][]byte{"k": []byte("v")}}
}

func wantStatus(t *testing.T, what string, err error, code int) {
	t.Helper()
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		t.Fatalf("%s: error %v, want a Status with code %d", what, err, code)
	}
	if int(st.Status().Code) != code {
		t.Fatalf("%s: code %d (%s), want %d", what, st.Status().Code, st.Status().Message, code)
	}
}

func TestReadsServeWhatTheNodeHolds(t *testing.T) {
	f := newFixture(t,
		edgeclient.Object{Pod: pod("app", "web")},
		edgeclient.Object{Pod: pod("app", "db")},
		edgeclient.Object{Node: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, UID: "node-uid"}}},
		edgeclient.Object{Service: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web"}, Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.5"}}},
	)
	for name, cs := range map[string]kubernetes.Interface{"json": f.json, "protobuf": f.protobuf} {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", testNode).String()})
			if err != nil {
				t.Fatal(err)
			}
			if len(pods.Items) != 2 || pods.Items[0].Name != "db" || pods.Items[1].Name != "web" || pods.ResourceVersion == "" {
				t.Fatalf("pods: %d items, rv %q", len(pods.Items), pods.ResourceVersion)
			}
			if pods.Items[0].ResourceVersion == "77" {
				t.Errorf("pods are served at the cloud's resourceVersion, want the local API's")
			}
			other, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=edge-2"})
			if err != nil || len(other.Items) != 0 {
				t.Errorf("pods of another node: %v items, %v; want none", len(other.Items), err)
			}
			if _, err := cs.CoreV1().Pods("app").Get(ctx, "web", metav1.GetOptions{}); err != nil {
				t.Error(err)
			}
			_, err = cs.CoreV1().Pods("app").Get(ctx, "nope", metav1.GetOptions{})
			wantStatus(t, "get of a pod not held", err, http.StatusNotFound)
			if !apierrors.IsNotFound(err) {
				t.Errorf("get of a pod not held: %v, want NotFound", err)
			}
			_, err = cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.bogus=1"})
			wantStatus(t, "unsupported field selector", err, http.StatusBadRequest)
			n, err := cs.CoreV1().Nodes().Get(ctx, testNode, metav1.GetOptions{ResourceVersion: "0"})
			if err != nil || n.UID != "node-uid" {
				t.Errorf("own node: %v, %v", n, err)
			}
			_, err = cs.CoreV1().Nodes().Get(ctx, "edge-2", metav1.GetOptions{})
			wantStatus(t, "another node", err, http.StatusNotFound)
			svcs, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{FieldSelector: "spec.clusterIP!=None"})
			if err != nil || len(svcs.Items) != 1 {
				t.Errorf("services: %v, %v", svcs, err)
			}
			rcs, err := cs.NodeV1().RuntimeClasses().List(ctx, metav1.ListOptions{})
			if err != nil || len(rcs.Items) != 0 {
				t.Errorf("runtime classes: %v, %v; want an empty list", rcs, err)
			}
			_, err = cs.NodeV1().RuntimeClasses().Get(ctx, "gvisor", metav1.GetOptions{})
			wantStatus(t, "a runtime class", err, http.StatusNotFound)
			_, err = cs.CoreV1().PersistentVolumeClaims("app").Get(ctx, "data", metav1.GetOptions{})
			wantStatus(t, "a resource edgesync does not carry", err, http.StatusNotFound)
			if _, err := cs.Discovery().ServerVersion(); err != nil {
				t.Errorf("version: %v", err)
			}
		})
	}
	_, lists, err := f.json.Discovery().ServerGroupsAndResources()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, l := range lists {
		for _, r := range l.APIResources {
			found[l.GroupVersion+"/"+r.Name] = true
		}
	}
	for _, want := range []string{"v1/pods", "v1/pods/status", "v1/nodes/status", "v1/serviceaccounts/token", "coordination.k8s.io/v1/leases", "storage.k8s.io/v1/csinodes"} {
		if !found[want] {
			t.Errorf("discovery lacks %s (has %v)", want, found)
		}
	}
}

func TestSecretsAndConfigMapsOnlyWhileAHeldPodUsesThem(t *testing.T) {
	f := newFixture(t,
		edgeclient.Object{Pod: pod("app", "web", usesSecret("used"))},
		edgeclient.Object{Secret: secret("app", "used")},
		// Held, but no pod uses it (any more).
		edgeclient.Object{Secret: secret("app", "unused")},
	)
	ctx := t.Context()
	for name, cs := range map[string]kubernetes.Interface{"json": f.json, "protobuf": f.protobuf} {
		t.Run(name, func(t *testing.T) {
			got, err := cs.CoreV1().Secrets("app").Get(ctx, "used", metav1.GetOptions{})
			if err != nil || string(got.Data["k"]) != "v" {
				t.Fatalf("a secret the node's pod uses: %v, %v", got, err)
			}
			_, err = cs.CoreV1().Secrets("app").Get(ctx, "unused", metav1.GetOptions{})
			wantStatus(t, "a held secret no pod uses", err, http.StatusForbidden)
			_, err = cs.CoreV1().Secrets("other").Get(ctx, "used", metav1.GetOptions{})
			wantStatus(t, "a secret of the same name in another namespace", err, http.StatusForbidden)
			_, err = cs.CoreV1().Secrets("app").List(ctx, metav1.ListOptions{})
			wantStatus(t, "a list of every secret", err, http.StatusForbidden)
			_, err = cs.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
			wantStatus(t, "a list of every secret of every namespace", err, http.StatusForbidden)
			one, err := cs.CoreV1().Secrets("app").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=used"})
			if err != nil || len(one.Items) != 1 {
				t.Errorf("list of one used secret: %v, %v", one, err)
			}
			_, err = cs.CoreV1().Secrets("app").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=unused"})
			wantStatus(t, "list of an unused secret", err, http.StatusForbidden)
			_, err = cs.CoreV1().Secrets("app").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=unused"})
			wantStatus(t, "watch of an unused secret", err, http.StatusForbidden)
			_, err = cs.CoreV1().ConfigMaps("app").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
			wantStatus(t, "a configmap no pod uses", err, http.StatusForbidden)
		})
	}
	// Used, but not (yet) held: not found, as the apiserver would say.
	f.srv.OnEvent(edgeclient.Event{Type: edgeclient.Added, Object: edgeclient.Object{Pod: pod("app", "api", usesSecret("coming"))}})
	_, err := f.json.CoreV1().Secrets("app").Get(ctx, "coming", metav1.GetOptions{})
	wantStatus(t, "a used secret not held yet", err, http.StatusNotFound)
	// The pod that used it goes: the secret is no longer readable.
	f.srv.OnEvent(edgeclient.Event{Type: edgeclient.Deleted, Key: edgeclient.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "app", Name: "web"}, UID: "uid-web"})
	_, err = f.json.CoreV1().Secrets("app").Get(ctx, "used", metav1.GetOptions{})
	wantStatus(t, "a secret whose pod left", err, http.StatusForbidden)
	if got := f.fake.sent(); len(got) != 0 {
		t.Errorf("reads reported %v to the cloud", got)
	}
}

func TestPodStatusPatchIsReported(t *testing.T) {
	f := newFixture(t, edgeclient.Object{Pod: pod("app", "web")})
	ctx := t.Context()
	now := metav1.Now()
	for i, cs := range []kubernetes.Interface{f.json, f.protobuf} {
		patch := fmt.Sprintf(`{"metadata":{"uid":"uid-web"},"status":{"phase":"Running","podIP":"10.1.0.%d","conditions":[{"type":"Ready","status":"True","lastTransitionTime":%q}]}}`,
			i+1, now.UTC().Format(time.RFC3339))
		got, err := cs.CoreV1().Pods("app").Patch(ctx, "web", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase != corev1.PodRunning || got.Spec.Containers[0].Name != "main" {
			t.Errorf("patched pod: phase %s, containers %v", got.Status.Phase, got.Spec.Containers)
		}
	}
	// The status is served back (the cloud does not echo it).
	got, err := f.json.CoreV1().Pods("app").Get(ctx, "web", metav1.GetOptions{})
	if err != nil || got.Status.PodIP != "10.1.0.2" {
		t.Errorf("served pod after the patch: %v, %v", got.Status, err)
	}
	want := []string{"pod status app/web uid-web", "pod status app/web uid-web"}
	if got := f.fake.sent(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("reports %v, want %v", got, want)
	}

	// Refusals: nothing is reported.
	_, err = f.json.CoreV1().Pods("app").Patch(ctx, "other", types.StrategicMergePatchType, []byte(`{"status":{"phase":"Failed"}}`), metav1.PatchOptions{}, "status")
	wantStatus(t, "status of a pod the node does not hold", err, http.StatusNotFound)
	_, err = f.json.CoreV1().Pods("app").Patch(ctx, "web", types.StrategicMergePatchType, []byte(`{"metadata":{"uid":"old-uid"},"status":{"phase":"Failed"}}`), metav1.PatchOptions{}, "status")
	wantStatus(t, "status of an older pod of the same name", err, http.StatusConflict)
	_, err = f.json.CoreV1().Pods("app").Create(ctx, pod("app", "mirror"), metav1.CreateOptions{})
	wantStatus(t, "a mirror pod", err, http.StatusForbidden)
	_, err = f.json.CoreV1().Pods("app").Patch(ctx, "web", types.ApplyPatchType, []byte(`{}`), metav1.PatchOptions{FieldManager: "x"}, "status")
	wantStatus(t, "server-side apply", err, http.StatusUnsupportedMediaType)
	if got := f.fake.sent(); len(got) != 2 {
		t.Errorf("refused writes reported: %v", got[2:])
	}

	// The cloud refuses: the kubelet hears it.
	f.fake.mu.Lock()
	f.fake.refuse = status.Error(codes.PermissionDenied, `node "edge-1" may not report status of pod app/web bound to node "b"`)
	f.fake.mu.Unlock()
	_, err = f.json.CoreV1().Pods("app").Patch(ctx, "web", types.StrategicMergePatchType, []byte(`{"status":{"phase":"Running"}}`), metav1.PatchOptions{}, "status")
	wantStatus(t, "a status the cloud refuses", err, http.StatusForbidden)
}

func TestPodDeleteAfterTermination(t *testing.T) {
	terminating := pod("app", "web", func(p *corev1.Pod) {
		p.DeletionTimestamp = ptr.To(metav1.Now())
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "main", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}}}
	})
	f := newFixture(t, edgeclient.Object{Pod: terminating}, edgeclient.Object{Pod: pod("app", "running")})
	ctx := t.Context()
	err := f.protobuf.CoreV1().Pods("app").Delete(ctx, "running", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	wantStatus(t, "delete of a pod the cloud is not deleting", err, http.StatusForbidden)
	err = f.protobuf.CoreV1().Pods("app").Delete(ctx, "web", metav1.DeleteOptions{Preconditions: metav1.NewUIDPreconditions("old")})
	wantStatus(t, "delete of another pod of the same name", err, http.StatusConflict)
	if got := f.fake.sent(); len(got) != 0 {
		t.Fatalf("refused deletes reported %v", got)
	}
	if err := f.protobuf.CoreV1().Pods("app").Delete(ctx, "web", metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0), Preconditions: metav1.NewUIDPreconditions("uid-web"),
	}); err != nil {
		t.Fatal(err)
	}
	f.fake.mu.Lock()
	defer f.fake.mu.Unlock()
	if len(f.fake.podStatus) != 1 || f.fake.podStatus[0].Phase != corev1.PodSucceeded {
		t.Errorf("delete reported %v, want the pod's status with phase Succeeded", f.fake.podStatus)
	}
}

func TestNodeRegistrationStatusAndLease(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: testNode, Labels: map[string]string{"kubernetes.io/hostname": testNode}},
		Status:     corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionFalse}}},
	}
	if _, err := f.protobuf.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	other := node.DeepCopy()
	other.Name = "edge-2"
	_, err := f.protobuf.CoreV1().Nodes().Create(ctx, other, metav1.CreateOptions{})
	wantStatus(t, "registering another node", err, http.StatusForbidden)
	patch := []byte(`{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady"}]}}`)
	got, err := f.protobuf.CoreV1().Nodes().Patch(ctx, testNode, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Status.Conditions) != 1 || got.Status.Conditions[0].Status != corev1.ConditionTrue {
		t.Errorf("patched node status %v", got.Status.Conditions)
	}
	_, err = f.protobuf.CoreV1().Nodes().Patch(ctx, "edge-2", types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	wantStatus(t, "status of another node", err, http.StatusForbidden)

	leases := f.protobuf.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: testNode}, Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(testNode), LeaseDurationSeconds: ptr.To[int32](40)}}
	if f.srv.KubeletAlive() {
		t.Error("the kubelet is alive before it created its Lease")
	}
	created, err := leases.Create(ctx, lease, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !f.srv.KubeletAlive() {
		t.Error("the kubelet is not alive after it created its Lease")
	}
	created.Spec.RenewTime = ptr.To(metav1.NewMicroTime(time.Now()))
	updated, err := leases.Update(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = leases.Update(ctx, created, metav1.UpdateOptions{}) // stale resourceVersion
	wantStatus(t, "lease update at an old version", err, http.StatusConflict)
	if got, err := leases.Get(ctx, testNode, metav1.GetOptions{}); err != nil || got.ResourceVersion != updated.ResourceVersion {
		t.Errorf("lease get: %v, %v", got, err)
	}
	otherLease := lease.DeepCopy()
	otherLease.Name = "edge-2"
	_, err = leases.Create(ctx, otherLease, metav1.CreateOptions{})
	wantStatus(t, "another node's lease", err, http.StatusForbidden)
	_, err = f.protobuf.CoordinationV1().Leases("kube-system").Get(ctx, "kube-scheduler", metav1.GetOptions{})
	wantStatus(t, "a lease not the node's", err, http.StatusForbidden)

	want := []string{"registration", "node status", "heartbeat", "heartbeat"}
	if got := f.fake.sent(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("reports %v, want %v", got, want)
	}
}

func TestTokenRequestAnsweredFromPushedTokens(t *testing.T) {
	tok := &edgesyncv1.ServiceAccountToken{
		Metadata: &metav1pb.ObjectMeta{Namespace: ptr.To("app"), Name: ptr.To("web/kube-api-access/token"), Uid: ptr.To("uid-web"),
			CreationTimestamp: &metav1pb.Time{Seconds: ptr.To(time.Now().Unix())}},
		PodName: "web", VolumeName: "kube-api-access", Path: "token", ServiceAccountName: "default",
		Token: "header.payload.sig", ExpirationTime: timestamppb.New(time.Now().Add(time.Hour)),
	}
	f := newFixture(t, edgeclient.Object{Pod: pod("app", "web")}, edgeclient.Object{Pod: pod("app", "api")}, edgeclient.Object{Token: tok})
	ctx := t.Context()
	req := func(podName string, uid types.UID, audiences ...string) *authenticationv1.TokenRequest {
		return &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: audiences, ExpirationSeconds: ptr.To[int64](3600),
			BoundObjectRef: &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: podName, UID: uid},
		}}
	}
	got, err := f.protobuf.CoreV1().ServiceAccounts("app").CreateToken(ctx, "default", req("web", "uid-web"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.Token != "header.payload.sig" || got.Status.ExpirationTimestamp.IsZero() {
		t.Errorf("token: %+v", got.Status)
	}
	_, err = f.json.CoreV1().ServiceAccounts("app").CreateToken(ctx, "default", req("elsewhere", ""), metav1.CreateOptions{})
	wantStatus(t, "a token for a pod the node does not run", err, http.StatusForbidden)
	_, err = f.json.CoreV1().ServiceAccounts("app").CreateToken(ctx, "admin", req("web", "uid-web"), metav1.CreateOptions{})
	wantStatus(t, "a token of another ServiceAccount", err, http.StatusForbidden)
	_, err = f.json.CoreV1().ServiceAccounts("app").CreateToken(ctx, "default", req("api", "uid-api"), metav1.CreateOptions{})
	wantStatus(t, "a token not pushed yet", err, http.StatusServiceUnavailable)
	_, err = f.json.CoreV1().ServiceAccounts("app").CreateToken(ctx, "default", req("web", "uid-web", "vault"), metav1.CreateOptions{})
	wantStatus(t, "a token of another audience", err, http.StatusServiceUnavailable)
	if got := f.fake.sent(); len(got) != 0 {
		t.Errorf("token requests reported %v", got)
	}
}

func TestEventsAndRefusedKinds(t *testing.T) {
	f := newFixture(t, edgeclient.Object{Pod: pod("app", "web")})
	ctx := t.Context()
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: "app", Name: "web.1"},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "app", Name: "web", UID: "uid-web", FieldPath: "spec.containers{main}"},
		Reason:         "Started", Message: "Started container main", Type: corev1.EventTypeNormal,
	}
	if _, err := f.protobuf.CoreV1().Events("app").Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nodeEv := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: "default", Name: "node.1"},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: testNode, UID: testNode},
		Reason:         "NodeReady", Type: corev1.EventTypeNormal,
	}
	if _, err := f.protobuf.CoreV1().Events("default").Create(ctx, nodeEv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	stranger := ev.DeepCopy()
	stranger.InvolvedObject.Name = "not-mine"
	_, err := f.json.CoreV1().Events("app").Create(ctx, stranger, metav1.CreateOptions{})
	wantStatus(t, "an event about a pod the node does not run", err, http.StatusForbidden)
	_, err = f.json.CoreV1().Events("app").Patch(ctx, "web.1", types.StrategicMergePatchType, []byte(`{"count":2}`), metav1.PatchOptions{})
	wantStatus(t, "an event count patch", err, http.StatusNotFound)

	_, err = f.json.CertificatesV1().CertificateSigningRequests().Create(ctx, nil, metav1.CreateOptions{})
	wantStatus(t, "a CSR", err, http.StatusForbidden)

	f.fake.mu.Lock()
	defer f.fake.mu.Unlock()
	if len(f.fake.events) != 2 || f.fake.events[0].Regarding.Kind != edgesyncv1.Kind_KIND_POD ||
		f.fake.events[0].FieldPath != "spec.containers{main}" || f.fake.events[1].Regarding.Kind != edgesyncv1.Kind_KIND_NODE {
		t.Errorf("event reports %+v", f.fake.events)
	}
}

func TestWatchResumesFromResourceVersion(t *testing.T) {
	f := newFixture(t, edgeclient.Object{Pod: pod("app", "web")})
	ctx := t.Context()
	for name, cs := range map[string]kubernetes.Interface{"json": f.json, "protobuf": f.protobuf} {
		t.Run(name, func(t *testing.T) {
			list, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + testNode})
			if err != nil {
				t.Fatal(err)
			}
			// Changes made before the watch starts, after the list.
			p := pod("app", "added-"+name)
			f.srv.OnEvent(edgeclient.Event{Type: edgeclient.Added, Object: edgeclient.Object{Pod: p}})
			w, err := cs.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + testNode, ResourceVersion: list.ResourceVersion, AllowWatchBookmarks: true})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			next := func() watch.Event {
				t.Helper()
				select {
				case ev := <-w.ResultChan():
					return ev
				case <-time.After(10 * time.Second):
					t.Fatal("no watch event")
				}
				return watch.Event{}
			}
			if ev := next(); ev.Type != watch.Added || ev.Object.(*corev1.Pod).Name != p.Name {
				t.Fatalf("first event %s %v, want ADDED %s", ev.Type, ev.Object, p.Name)
			}
			f.srv.OnEvent(edgeclient.Event{Type: edgeclient.Deleted, Key: edgeclient.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "app", Name: p.Name}, UID: string(p.UID)})
			if ev := next(); ev.Type != watch.Deleted || ev.Object.(*corev1.Pod).Name != p.Name {
				t.Fatalf("second event %s %v, want DELETED %s", ev.Type, ev.Object, p.Name)
			}
		})
	}
	_, err := f.json.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{ResourceVersion: "1"})
	wantStatus(t, "a watch from a version before the agent started", err, http.StatusGone)
}

// TestInformerSyncsAndFollows runs client-go's informer (watch-list
// streaming, on by default in 1.35, with its fallback) as the kubelet's
// pod source does.
func TestInformerSyncsAndFollows(t *testing.T) {
	for _, name := range []string{"json", "protobuf"} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, edgeclient.Object{Pod: pod("app", "web")})
			cs := f.json
			if name == "protobuf" {
				cs = f.protobuf
			}
			ctx, cancel := context.WithCancel(t.Context())
			lw := cache.NewListWatchFromClient(cs.CoreV1().RESTClient(), "pods", metav1.NamespaceAll, fields.OneTermEqualSelector("spec.nodeName", testNode))
			seen := make(chan string, 16)
			_, inf := cache.NewInformerWithOptions(cache.InformerOptions{
				ListerWatcher: lw, ObjectType: &corev1.Pod{},
				Handler: cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) { seen <- "add " + obj.(*corev1.Pod).Name }},
			})
			var wg sync.WaitGroup
			wg.Go(func() { inf.RunWithContext(ctx) })
			defer func() { cancel(); wg.Wait() }()
			if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
				t.Fatal("informer did not sync")
			}
			if got := <-seen; got != "add web" {
				t.Fatalf("first add %q", got)
			}
			f.srv.OnEvent(edgeclient.Event{Type: edgeclient.Added, Object: edgeclient.Object{Pod: pod("app", "later-"+name)}})
			select {
			case got := <-seen:
				if got != "add later-"+name {
					t.Fatalf("then %q", got)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the informer did not see a pod added after it synced")
			}
		})
	}
}

func TestOfflineWritesAreAnsweredFromTheQueue(t *testing.T) {
	f := newFixture(t, edgeclient.Object{Pod: pod("app", "web")})
	f.fake.mu.Lock()
	f.fake.connected = false
	// Would fail the write if it were waited for.
	f.fake.refuse = status.Error(codes.Unavailable, "not connected")
	f.fake.mu.Unlock()
	ctx := t.Context()
	if _, err := f.json.CoreV1().Pods("app").Patch(ctx, "web", types.StrategicMergePatchType, []byte(`{"status":{"phase":"Running"}}`), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("offline pod status: %v", err)
	}
	got, err := f.json.CoreV1().Pods("app").Get(ctx, "web", metav1.GetOptions{})
	if err != nil || got.Status.Phase != corev1.PodRunning {
		t.Errorf("offline read after the write: %v, %v", got.Status.Phase, err)
	}
	if got := f.fake.sent(); len(got) != 1 {
		t.Errorf("offline reports %v, want the pod status queued", got)
	}
}

func TestOnlyTheNodesKubeletIsServed(t *testing.T) {
	f := newFixture(t, edgeclient.Object{Pod: pod("app", "web", usesSecret("used"))}, edgeclient.Object{Secret: secret("app", "used")})
	// A certificate from another CA: the TLS handshake fails.
	other, err := EnsureCredentials(filepath.Join(t.TempDir(), "other"), testNode)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(other.ClientCertPath(), other.ClientKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := f.creds.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tlsCfg.ClientCAs, Certificates: []tls.Certificate{cert}}}}
	defer client.CloseIdleConnections()
	if resp, err := client.Get(f.url + "/api/v1/namespaces/app/secrets/used"); err == nil {
		resp.Body.Close()
		t.Errorf("a client certificate of another CA: %s, want the handshake refused", resp.Status)
	}
	// No client certificate at all.
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tlsCfg.ClientCAs}}}
	defer anon.CloseIdleConnections()
	if resp, err := anon.Get(f.url + "/api/v1/namespaces/app/secrets/used"); err == nil {
		resp.Body.Close()
		t.Errorf("no client certificate: %s, want the handshake refused", resp.Status)
	}
	// The handler itself refuses an unauthenticated request.
	rec := httptest.NewRecorder()
	f.srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/namespaces/app/secrets/used", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("request without TLS: %d, want 401", rec.Code)
	}
}

// TestOtherCallersNeedAnAuthenticatorAndAnAllow: a caller with no client
// certificate is served only when an authenticator knows it, and then
// only what a resource's Allow admits (none of the kubelet's resources).
func TestOtherCallersNeedAnAuthenticatorAndAnAllow(t *testing.T) {
	fake := &fakeReporter{held: []edgeclient.Object{{Pod: pod("app", "web")}}}
	srv, err := newServer(testNode, fake, Options{Authenticators: []Authenticator{func(r *http.Request) (string, bool, error) {
		switch r.Header.Get("Authorization") {
		case "Bearer app":
			return "system:serviceaccount:app:reader", true, nil
		case "":
			return "", false, nil
		}
		return "", false, errors.New("bad token")
	}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		auth string
		code int
	}{{"", http.StatusUnauthorized}, {"Bearer forged", http.StatusUnauthorized}, {"Bearer app", http.StatusForbidden}} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/api/v1/namespaces/app/pods/web", nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		srv.Handler().ServeHTTP(rec, req)
		if rec.Code != tc.code {
			t.Errorf("%q: %d %s, want %d", tc.auth, rec.Code, rec.Body, tc.code)
		}
	}
	// A resource that admits the application.
	srv.AddResource(&Resource{
		GroupVersion: coreV1, Plural: "pods", Kind: "Pod", Namespaced: true,
		New: func() runtime.Object { return &corev1.Pod{} }, NewList: func() runtime.Object { return &corev1.PodList{} },
		Allow: func(_ *Server, req *Request) error {
			if req.Verb == "get" && req.Namespace == "app" {
				return nil
			}
			return forbidden(req, "not this")
		},
	})
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/api/v1/namespaces/app/pods/web", nil)
	req.Header.Set("Authorization", "Bearer app")
	srv.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("admitted application: %d %s", rec.Code, rec.Body)
	}
}
