package controllers_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/controllers"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

func podKey(ns, name string) feed.Key {
	return feed.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: ns, Name: name}
}

func configMapKey(ns, name string) feed.Key {
	return feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: ns, Name: name}
}

func secretKey(ns, name string) feed.Key {
	return feed.Key{Kind: edgesyncv1.Kind_KIND_SECRET, Namespace: ns, Name: name}
}

// createConfig creates a ConfigMap and a Secret named name in ns.
func createConfig(t *testing.T, client kubernetes.Interface, ns, name string) {
	t.Helper()
	if _, err := client.CoreV1().ConfigMaps(ns).Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"greeting": "hello"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Secrets(ns).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name}, StringData: map[string]string{"password": "s3cret"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// podUsing returns a pod on node using ConfigMap cm through a volume and
// Secret secret through an env var.
func podUsing(name, node, cm, secret string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "app", Image: "busybox"}},
		},
	}
	if cm != "" {
		pod.Spec.Volumes = []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
			ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: cm}},
		}}}
	}
	if secret != "" {
		pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{
			SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: "password"},
		}}}
	}
	return pod
}

func TestPodReachesOnlyItsNodeWithItsConfigMapAndSecret(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	edge1, edge2 := edgeNode(t, client, "edge-1"), edgeNode(t, client, "edge-2")
	rec := newRecorder()
	ctrls := start(t, controllers.Config{DisableDevices: true}, rec)

	createConfig(t, client, ns, "app")
	createConfig(t, client, ns, "unused")
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("web", edge1, "app", "app"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	got := rec.waitApplied(t, edge1, podKey(ns, "web"), nil).GetPodEvent().GetPod()
	if got.GetMetadata().GetUid() != string(pod.UID) || got.GetSpec().GetNodeName() != edge1 {
		t.Fatalf("edge-1 got pod uid %s node %s, want uid %s node %s", got.GetMetadata().GetUid(), got.GetSpec().GetNodeName(), pod.UID, edge1)
	}
	if len(got.GetMetadata().GetManagedFields()) != 0 {
		t.Errorf("pod sent with %d managed fields, want none", len(got.GetMetadata().GetManagedFields()))
	}
	cm := rec.waitApplied(t, edge1, configMapKey(ns, "app"), nil).GetConfigMapEvent().GetConfigMap()
	if cm.GetData()["greeting"] != "hello" {
		t.Errorf("configmap data %v, want greeting=hello", cm.GetData())
	}
	secret := rec.waitApplied(t, edge1, secretKey(ns, "app"), nil).GetSecretEvent().GetSecret()
	if string(secret.GetData()["password"]) != "s3cret" {
		t.Errorf("secret sent without its data")
	}
	// What the pod uses is sent before the pod.
	sent := rec.sent(edge1)
	if first := sent[0].Key; first.Kind == edgesyncv1.Kind_KIND_POD {
		t.Errorf("edge-1 was sent the pod before its configmap and secret: %v", keys(sent))
	}
	for _, obj := range sent {
		if obj.Key.Name == "unused" {
			t.Errorf("edge-1 was sent %s, which no pod of it uses", obj.Key)
		}
	}
	if objs := withoutNodes(rec.sent(edge2)); len(objs) != 0 {
		t.Errorf("edge-2 was sent %v, want nothing", keys(objs))
	}

	desired, err := ctrls.Desired(edge1)
	if err != nil {
		t.Fatal(err)
	}
	desired = withoutNodes(desired)
	// Four: ServiceAccount admission gave the pod a projected volume of
	// the namespace's kube-root-ca.crt ConfigMap.
	if len(desired) != 4 || !hasKey(desired, edgesyncv1.Kind_KIND_CONFIG_MAP, "kube-root-ca.crt") {
		t.Errorf("Desired(edge-1) = %v, want the pod, its configmap, its secret and kube-root-ca.crt", keys(desired))
	}
	if desired, err := ctrls.Desired(edge2); err != nil || len(withoutNodes(desired)) != 0 {
		t.Errorf("Desired(edge-2) = %v, %v; want nothing", keys(desired), err)
	}

	// An update of the ConfigMap reaches the node that uses it.
	cmObj, err := client.CoreV1().ConfigMaps(ns).Get(t.Context(), "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cmObj.Data["greeting"] = "bonjour"
	if _, err := client.CoreV1().ConfigMaps(ns).Update(t.Context(), cmObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge1, configMapKey(ns, "app"), func(m *edgesyncv1.SyncResponse) bool {
		return m.GetConfigMapEvent().GetConfigMap().GetData()["greeting"] == "bonjour"
	})

	// Deleting the pod deletes it, its ConfigMap and its Secret on edge-1.
	if err := client.CoreV1().Pods(ns).Delete(t.Context(), "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	rec.waitDeleted(t, edge1, podKey(ns, "web"))
	rec.waitDeleted(t, edge1, configMapKey(ns, "app"))
	rec.waitDeleted(t, edge1, secretKey(ns, "app"))
	if objs := withoutNodes(rec.sent(edge2)); len(objs) != 0 {
		t.Errorf("edge-2 was sent %v, want nothing", keys(objs))
	}
	if desired, err := ctrls.Desired(edge1); err != nil || len(withoutNodes(desired)) != 0 {
		t.Errorf("Desired(edge-1) after deletion = %v, %v; want nothing", keys(desired), err)
	}
}

func TestConfigMapStaysWhileAnyPodOnTheNodeUsesIt(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	edge1, edge2 := edgeNode(t, client, "edge-1"), edgeNode(t, client, "edge-2")
	rec := newRecorder()
	start(t, controllers.Config{DisableDevices: true}, rec)
	createConfig(t, client, ns, "shared")

	for _, p := range []*corev1.Pod{
		podUsing("a", edge1, "shared", ""),
		podUsing("b", edge1, "shared", ""),
		podUsing("c", edge2, "shared", ""),
	} {
		if _, err := client.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	rec.waitApplied(t, edge1, podKey(ns, "b"), nil)
	rec.waitApplied(t, edge2, podKey(ns, "c"), nil)
	rec.waitApplied(t, edge1, configMapKey(ns, "shared"), nil)
	rec.waitApplied(t, edge2, configMapKey(ns, "shared"), nil)

	deletePod := func(name string) {
		t.Helper()
		if err := client.CoreV1().Pods(ns).Delete(t.Context(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
	}
	deletePod("a")
	rec.waitDeleted(t, edge1, podKey(ns, "a"))
	if last := rec.last(edge1, configMapKey(ns, "shared")); last.Deleted {
		t.Fatal("edge-1 was told to delete the configmap while pod b still uses it")
	}
	deletePod("b")
	rec.waitDeleted(t, edge1, podKey(ns, "b"))
	rec.waitDeleted(t, edge1, configMapKey(ns, "shared"))
	if last := rec.last(edge2, configMapKey(ns, "shared")); last.Deleted {
		t.Fatal("edge-2 lost the configmap its pod c still uses")
	}

	// Forgotten for good: a later update no longer reaches edge-1.
	cm, err := client.CoreV1().ConfigMaps(ns).Get(t.Context(), "shared", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["greeting"] = "again"
	if _, err := client.CoreV1().ConfigMaps(ns).Update(t.Context(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge2, configMapKey(ns, "shared"), func(m *edgesyncv1.SyncResponse) bool {
		return m.GetConfigMapEvent().GetConfigMap().GetData()["greeting"] == "again"
	})
	if last := rec.last(edge1, configMapKey(ns, "shared")); !last.Deleted {
		t.Fatal("edge-1 was sent the configmap after its last pod using it was deleted")
	}
}

func TestPodsOfNonEdgeNodesAreNotSent(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	cloud := testcluster.UniqueName("cloud")
	if _, err := client.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: cloud}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deleteNodeAtCleanup(t, client, cloud)
	rec := newRecorder()
	ctrls := start(t, controllers.Config{DisableDevices: true}, rec)
	createConfig(t, client, ns, "app")
	if _, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("web", cloud, "app", "app"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if desired, err := ctrls.Desired(cloud); err != nil || len(desired) != 0 {
		t.Errorf("Desired(non-edge node) = %v, %v; want nothing", keys(desired), err)
	}

	// Labelling the node makes it an edge node: its pod follows.
	node, err := client.CoreV1().Nodes().Get(t.Context(), cloud, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Labels = map[string]string{controllers.DefaultEdgeLabel: ""}
	if _, err := client.CoreV1().Nodes().Update(t.Context(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, cloud, podKey(ns, "web"), nil)
	rec.waitApplied(t, cloud, secretKey(ns, "app"), nil)
}

func TestDeletingPodIsSentAndRemovedOnceReportedTerminated(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	edge1 := edgeNode(t, client, "edge-1")
	rec := newRecorder()
	ctrls := start(t, controllers.Config{DisableDevices: true}, rec)
	createConfig(t, client, ns, "app")
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("job", edge1, "app", "app"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge1, podKey(ns, "job"), nil)

	// Without a kubelet, a bound pod being deleted waits for its node.
	if err := client.CoreV1().Pods(ns).Delete(t.Context(), "job", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge1, podKey(ns, "job"), func(m *edgesyncv1.SyncResponse) bool {
		return m.GetPodEvent().GetPod().GetMetadata().GetDeletionTimestamp() != nil
	})

	results := make(answers, 1)
	ctrls.HandleReport(edge1, podStatusReport(7, pod, corev1.PodStatus{Phase: corev1.PodSucceeded}), results.answer)
	if r := results.wait(t); r.GetCode() != 0 || r.GetRequestId() != 7 {
		t.Fatalf("terminated status answered %v, want OK for request 7", r)
	}
	eventually(t, "the terminated pod is deleted", func() (bool, error) {
		_, err := client.CoreV1().Pods(ns).Get(t.Context(), "job", metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	})
	rec.waitDeleted(t, edge1, podKey(ns, "job"))
	rec.waitDeleted(t, edge1, secretKey(ns, "app"))
}

// hasKey tells whether objs hold an object of kind named name.
func hasKey(objs []*feed.Object, kind edgesyncv1.Kind, name string) bool {
	for _, o := range objs {
		if o.Key.Kind == kind && o.Key.Name == name {
			return true
		}
	}
	return false
}
