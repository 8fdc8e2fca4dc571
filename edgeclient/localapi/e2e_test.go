package localapi_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/localapi"
	"github.com/edgesync/edgesync/internal/cloudtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// liveNode is a real edgeclient connected to the real controllers and
// sync server on the devcluster, with its local API served on loopback,
// and clientsets that use it as the node's kubelet does.
type liveNode struct {
	kube     kubernetes.Interface // the cluster's admin
	node, ns string
	client   *edgeclient.Client
	api      *localapi.Server
	json     kubernetes.Interface // the kubelet, JSON
	protobuf kubernetes.Interface // the kubelet, protobuf
	stop     func()               // stops the sync server: the node is offline
	link     *link                // between the node and the sync server: cut and restored
	env      *servertest.Env      // the sync server
	// addr and caFile are where applications reach the local API and
	// the CA they trust for it.
	addr, caFile string
}

func startLiveNode(t *testing.T) *liveNode {
	t.Helper()
	kube := testcluster.Client(t)
	return startLiveNodeOn(t, cloudtest.Start(t), testcluster.Namespace(t, kube))
}

// startLiveNodeOn is startLiveNode for a node of the cloud env, its test
// objects in namespace ns.
func startLiveNodeOn(t *testing.T, env *servertest.Env, ns string) *liveNode {
	t.Helper()
	n := &liveNode{kube: testcluster.Client(t), ns: ns}
	n.node = cloudtest.Node(t, "edge-localapi")
	n.stop, n.env = env.Stop, env
	n.link = newLink(t, env.Addr)
	certFile, keyFile := env.NodeCert(t, n.node)
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	var api *localapi.Server // set before Run, which alone calls OnEvent
	c, err := edgeclient.New(edgeclient.Config{
		Server: n.link.addr, CAFile: env.CAFile, CertFile: certFile, KeyFile: keyFile,
		NodeName: n.node, StoreDir: t.TempDir(), Logger: log,
		OnEvent: func(_ context.Context, ev edgeclient.Event) error {
			api.OnEvent(ev)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := localapi.EnsureCredentials(filepath.Join(t.TempDir(), "localapi"), n.node)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	api, err = localapi.New(c, localapi.Options{Credentials: creds, Logger: log.Named("localapi"),
		Applications: true, ApplicationsAddress: ln.Addr().String()})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	n.client, n.api = c, api
	ctx, cancel := context.WithCancel(context.Background())
	served, ran := make(chan error, 1), make(chan error, 1)
	go func() { served <- api.Serve(ctx, ln) }()
	go func() { ran <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("local API: %v", err)
		}
		if err := <-ran; err != nil {
			t.Errorf("client: %v", err)
		}
		_ = c.Close()
	})
	n.addr, n.caFile = "https://"+ln.Addr().String(), creds.CAPath()
	kubeconfig := filepath.Join(t.TempDir(), "kubelet.kubeconfig")
	if err := creds.WriteKubeconfig(kubeconfig, "https://"+ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	n.json = kubeletClient(t, kubeconfig, "application/json")
	n.protobuf = kubeletClient(t, kubeconfig, "application/vnd.kubernetes.protobuf")
	return n
}

// kubeletClient is a clientset from the kubeconfig the agent writes, as
// the kubelet builds it.
func kubeletClient(t *testing.T, kubeconfig, contentType string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
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

// eventually checks cond every 100ms until it holds or the deadline.
func eventually(t *testing.T, ctx context.Context, what string, cond func() (bool, error)) {
	t.Helper()
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// register does what the kubelet does first: create its Node, ready, and
// its Lease, through the local API.
func (n *liveNode) register(t *testing.T, ctx context.Context) {
	t.Helper()
	// Connected: writes are answered by the cloud (offline they would be
	// answered from the queue).
	if _, err := n.client.WaitFor(ctx, func(s edgeclient.State) bool { return s.Synced }); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.node, Labels: map[string]string{corev1.LabelHostname: n.node, corev1.LabelOSStable: "linux"}},
		Status: corev1.NodeStatus{
			Capacity: capacity, Allocatable: capacity,
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: now, LastTransitionTime: now}},
		},
	}
	if _, err := n.protobuf.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubelet registers its node: %v", err)
	}
	// Answered once the cloud has created it.
	got, err := n.kube.CoreV1().Nodes().Get(ctx, n.node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the registered node in the cluster: %v", err)
	}
	if got.Labels[corev1.LabelHostname] != n.node {
		t.Errorf("registered node labels %v", got.Labels)
	}
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: n.node, Namespace: corev1.NamespaceNodeLease},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(n.node), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: ptr.To(metav1.NowMicro())},
	}
	if _, err := n.protobuf.CoordinationV1().Leases(corev1.NamespaceNodeLease).Create(ctx, lease, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubelet creates its lease: %v", err)
	}
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// runningStatus is the status patch a kubelet sends for a started pod.
func runningStatus(uid types.UID) []byte {
	now := metav1.Now().UTC().Format(time.RFC3339)
	return fmt.Appendf(nil, `{"metadata":{"uid":%q},"status":{"phase":"Running","startTime":%q,"conditions":[`+
		`{"type":"Initialized","status":"True","lastTransitionTime":%q},{"type":"ContainersReady","status":"True","lastTransitionTime":%q},`+
		`{"type":"Ready","status":"True","lastTransitionTime":%q},{"type":"PodScheduled","status":"True","lastTransitionTime":%q}]}}`,
		uid, now, now, now, now, now)
}

// TestEndToEndKubeletThroughLocalAPI plays the kubelet against the local
// API of a real edgeclient connected to the real server and controllers on
// the devcluster: it registers its node, runs the pods of a Deployment the
// scheduler places on it (a watch-list informer over protobuf), reads the
// Secret and ConfigMap they use and their projected token (which passes a
// TokenReview), reports them Running and Ready (the Deployment becomes
// available), resumes a watch from a resourceVersion, and is refused what
// is not its node's.
func TestEndToEndKubeletThroughLocalAPI(t *testing.T) {
	n := startLiveNode(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	kube, ns := n.kube, n.ns
	n.register(t, ctx)

	for _, obj := range []any{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db-password"}, StringData: map[string]string{"password": "s3cret"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "unrelated"}, StringData: map[string]string{"key": "nope"}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-config"}, Data: map[string]string{"index.html": "hello"}},
	} {
		var err error
		switch o := obj.(type) {
		case *corev1.Secret:
			_, err = kube.CoreV1().Secrets(ns).Create(ctx, o, metav1.CreateOptions{})
		case *corev1.ConfigMap:
			_, err = kube.CoreV1().ConfigMaps(ns).Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := testcluster.WaitServiceAccount(ctx, kube, ns); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "web"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{corev1.LabelHostname: n.node},
					Containers: []corev1.Container{{
						Name: "web", Image: "registry.k8s.io/pause:3.10",
						Env: []corev1.EnvVar{{Name: "DB_PASSWORD", ValueFrom: &corev1.EnvVarSource{
							SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "db-password"}, Key: "password"}}}},
						VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/config"}},
					}},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
						ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "web-config"}}}}},
				},
			},
		},
	}
	if _, err := kube.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The kubelet's pod source: an informer of the pods bound to the
	// node, over protobuf (client-go 1.35 streams the initial list).
	podCh := make(chan *corev1.Pod, 64)
	lw := cache.NewListWatchFromClient(n.protobuf.CoreV1().RESTClient(), "pods", metav1.NamespaceAll, fields.OneTermEqualSelector("spec.nodeName", n.node))
	_, inf := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw, ObjectType: &corev1.Pod{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { podCh <- obj.(*corev1.Pod) },
			UpdateFunc: func(_, obj any) { podCh <- obj.(*corev1.Pod) },
		},
	})
	infCtx, infStop := context.WithCancel(ctx)
	infDone := make(chan struct{})
	go func() { defer close(infDone); inf.RunWithContext(infCtx) }()
	defer func() { infStop(); <-infDone }()
	var pod *corev1.Pod
	select {
	case pod = <-podCh:
	case <-ctx.Done():
		t.Fatal("the Deployment's pod did not reach the kubelet's informer")
	}
	if pod.Namespace != ns || pod.Spec.NodeName != n.node {
		t.Fatalf("the kubelet got pod %s/%s on %q", pod.Namespace, pod.Name, pod.Spec.NodeName)
	}

	// What the pod uses is readable; what it does not use is not.
	var secret *corev1.Secret
	eventually(t, ctx, "the pod's secret on the node", func() (bool, error) {
		var err error
		secret, err = n.protobuf.CoreV1().Secrets(ns).Get(ctx, "db-password", metav1.GetOptions{})
		return err == nil, ignoreNotFound(err)
	})
	if string(secret.Data["password"]) != "s3cret" {
		t.Errorf("secret data %q", secret.Data["password"])
	}
	if _, err := n.json.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=web-config"}); err != nil {
		t.Errorf("the pod's configmap, as the kubelet's watch-based manager lists it: %v", err)
	}
	if _, err := n.json.CoreV1().Secrets(ns).Get(ctx, "unrelated", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("a secret no pod of the node uses: %v, want Forbidden", err)
	}

	// The projected ServiceAccount token, pushed by the cloud, passes a
	// TokenReview.
	var token *authenticationv1.TokenRequest
	eventually(t, ctx, "the pod's token", func() (bool, error) {
		var err error
		token, err = n.protobuf.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "default", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3607),
				BoundObjectRef: &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
		}, metav1.CreateOptions{})
		if apierrors.IsServiceUnavailable(err) {
			return false, nil
		}
		return err == nil, err
	})
	review, err := kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token.Status.Token}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !review.Status.Authenticated || review.Status.User.Username != "system:serviceaccount:"+ns+":default" {
		t.Errorf("token review: %+v", review.Status)
	}

	// Running and Ready, through pods/status: in the cluster as soon as
	// the write is answered, and the Deployment becomes available.
	if _, err := n.protobuf.CoreV1().Pods(ns).Patch(ctx, pod.Name, types.StrategicMergePatchType, runningStatus(pod.UID), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	inCloud, err := kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil || inCloud.Status.Phase != corev1.PodRunning || !ready(inCloud) {
		t.Fatalf("pod in the cluster after the status write: %v, %v", inCloud.Status, err)
	}
	eventually(t, ctx, "the Deployment to be available", func() (bool, error) {
		d, err := kube.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && d.Status.AvailableReplicas == 1, err
	})

	// A watch resumed from a list's resourceVersion sees what came after.
	list, err := n.json.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.node})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":2}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	w, err := n.json.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.node, ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for added := false; !added; {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("the watch ended")
			}
			p, _ := ev.Object.(*corev1.Pod)
			added = ev.Type == watch.Added && p != nil && p.Name != pod.Name
		case <-ctx.Done():
			t.Fatal("the resumed watch did not see the second replica")
		}
	}

	// A status write about a pod of another node: refused, and the cluster
	// is untouched.
	foreign := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "elsewhere"},
		Spec:       corev1.PodSpec{NodeName: "some-other-node", Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}}},
	}
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = n.protobuf.CoreV1().Pods(ns).Patch(ctx, "elsewhere", types.StrategicMergePatchType, []byte(`{"status":{"phase":"Failed"}}`), metav1.PatchOptions{}, "status")
	if !apierrors.IsNotFound(err) && !apierrors.IsForbidden(err) {
		t.Errorf("status of another node's pod: %v, want NotFound or Forbidden", err)
	}
	if p, err := kube.CoreV1().Pods(ns).Get(ctx, "elsewhere", metav1.GetOptions{}); err != nil || p.Status.Phase == corev1.PodFailed {
		t.Errorf("another node's pod after the refused write: %v, %v", p.Status.Phase, err)
	}
	if st := n.client.State(); st.PendingReports != 0 {
		t.Errorf("%d reports pending after the refused write", st.PendingReports)
	}
}

// TestEndToEndOfflineReads: with the sync server gone, the kubelet reads
// what the node holds and its writes are answered from the queue.
func TestEndToEndOfflineReads(t *testing.T) {
	n := startLiveNode(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	n.register(t, ctx)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: n.ns, Name: "web"},
		Spec:       corev1.PodSpec{NodeName: n.node, Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}}},
	}
	pod, err := n.kube.CoreV1().Pods(n.ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, "the pod on the node", func() (bool, error) {
		_, err := n.json.CoreV1().Pods(n.ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil, ignoreNotFound(err)
	})

	n.stop()
	if _, err := n.client.WaitFor(ctx, func(s edgeclient.State) bool { return !s.Connected }); err != nil {
		t.Fatal(err)
	}
	pods, err := n.protobuf.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.node})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].UID != pod.UID {
		t.Fatalf("offline list: %v, %v", pods, err)
	}
	if _, err := n.protobuf.CoreV1().Nodes().Get(ctx, n.node, metav1.GetOptions{}); err != nil {
		t.Errorf("offline node: %v", err)
	}
	got, err := n.protobuf.CoreV1().Pods(n.ns).Patch(ctx, "web", types.StrategicMergePatchType, runningStatus(pod.UID), metav1.PatchOptions{}, "status")
	if err != nil || got.Status.Phase != corev1.PodRunning {
		t.Fatalf("offline status write: %v, %v", got, err)
	}
	if st := n.client.State(); st.PendingReports == 0 {
		t.Error("the offline status write is not queued")
	}
	lease, err := n.protobuf.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, n.node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lease.Spec.RenewTime = ptr.To(metav1.NowMicro())
	if _, err := n.protobuf.CoordinationV1().Leases(corev1.NamespaceNodeLease).Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		t.Errorf("offline lease renewal: %v", err)
	}
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
