package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/autonomy"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// edgeAgent is one edgesync-agent process with its store, restartable.
type edgeAgent struct {
	node, store string
	args        []string
	proc        *process
}

// startAgent starts edgesync-agent for a new node with the given labels
// and waits until its Node is Ready in the apiserver.
// agentArgs are added to the agent's flags; "--server ADDR" among them
// replaces the server's address (a proxy in front of it, say).
func (in *installation) startAgent(t *testing.T, client kubernetes.Interface, node string, nodeLabels map[string]string, agentArgs ...string) *edgeAgent {
	t.Helper()
	server := in.addr
	if i := slices.Index(agentArgs, "--server"); i >= 0 && i+1 < len(agentArgs) {
		server = agentArgs[i+1]
		agentArgs = slices.Delete(slices.Clone(agentArgs), i, i+2)
	}
	certFile, keyFile := in.nodeCert(t, node)
	var pairs []string
	for k, v := range nodeLabels {
		pairs = append(pairs, k+"="+v)
	}
	a := &edgeAgent{node: node, store: filepath.Join(t.TempDir(), "store-"+node)}
	a.args = []string{
		"--server", server, "--node", node,
		"--ca", filepath.Join(in.pki, "ca.crt"), "--cert", certFile, "--key", keyFile,
		"--store", a.store, "--labels", strings.Join(pairs, ","),
	}
	a.args = append(a.args, agentArgs...)
	a.start(t)
	eventually(t, time.Minute, "node "+node+" to be Ready", func() error {
		return nodeReady(t.Context(), client, node, corev1.ConditionTrue)
	}, a.proc, in.server)
	t.Cleanup(func() {
		// The Node outlives the agent otherwise, and its pods.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.CoreV1().Nodes().Delete(ctx, node, metav1.DeleteOptions{})
	})
	return a
}

func (a *edgeAgent) start(t *testing.T) {
	t.Helper()
	a.proc = start(t, "edgesync-agent-"+a.node, nil, repo.Binary(t, "edgesync-agent"), a.args...)
}

// nodeReady checks that node's Ready condition has status want.
func nodeReady(ctx context.Context, client kubernetes.Interface, node string, want corev1.ConditionStatus) error {
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status != want {
				return fmt.Errorf("node %s is Ready=%s (%s), want %s", node, c.Status, c.Reason, want)
			}
			return nil
		}
	}
	return fmt.Errorf("node %s has no Ready condition", node)
}

// hasTaint tells whether node carries the taint key with effect.
func hasTaint(n *corev1.Node, key string, effect corev1.TaintEffect) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key && t.Effect == effect {
			return true
		}
	}
	return false
}

// webPodSpec is the pod template of the workloads a user writes for edge
// nodes: selected by nodeSelector, tolerating the edge role, using a
// ConfigMap and a Secret.
func webPodSpec(group string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{controllers.DefaultEdgeLabel: "", "e2e.edgesync.io/group": group},
			Tolerations:  []corev1.Toleration{{Key: controllers.DefaultEdgeLabel, Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{
				Name: "web", Image: "nginx:1.27",
				EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: "web-credentials"}}}},
				VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/web"}},
			}},
			Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
				ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "web-config"}}}}},
		},
	}
}

func createWebConfig(t *testing.T, client kubernetes.Interface, ns string) {
	t.Helper()
	if _, err := client.CoreV1().ConfigMaps(ns).Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "web-config"}, Data: map[string]string{"greeting": "hello"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Secrets(ns).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "web-credentials"}, StringData: map[string]string{"password": "e2e"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestScheduledWorkloads runs what an edge user writes: a Deployment and a
// DaemonSet selecting edge nodes. kube-scheduler places the Deployment's
// pods and the DaemonSet controller one pod per edge node; the agents run
// them and report them, and only those reports make the workloads
// available.
func TestScheduledWorkloads(t *testing.T) {
	in := install(t)
	client := testcluster.Client(t)
	group := testcluster.UniqueName("g")
	agents := []*edgeAgent{
		in.startAgent(t, client, testcluster.UniqueName("edge-a"), map[string]string{"e2e.edgesync.io/group": group}),
		in.startAgent(t, client, testcluster.UniqueName("edge-b"), map[string]string{"e2e.edgesync.io/group": group}),
	}
	ns := testcluster.Namespace(t, client)
	createWebConfig(t, client, ns)
	ctx := t.Context()

	replicas := int32(2)
	selector := &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       appsv1.DeploymentSpec{Replicas: &replicas, Selector: selector, Template: webPodSpec(group)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	agentTemplate := webPodSpec(group)
	agentTemplate.Labels = map[string]string{"app": "edge-agent"}
	if _, err := client.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "edge-agent"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: agentTemplate.Labels},
			Template: agentTemplate,
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	procs := []*process{in.server, agents[0].proc, agents[1].proc}
	eventually(t, 2*time.Minute, "the Deployment to be available (2/2)", func() error {
		d, err := client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != 2 || d.Status.AvailableReplicas != 2 {
			return fmt.Errorf("deployment ready %d available %d of 2", d.Status.ReadyReplicas, d.Status.AvailableReplicas)
		}
		return nil
	}, procs...)
	out := run(t, in.adminEnv(), in.kubectl, "-n", ns, "get", "deploy", "web")
	if !regexp.MustCompile(`(?m)^web\s+2/2\s+2\s+2\b`).MatchString(out) {
		t.Errorf("kubectl get deploy does not show web 2/2 up-to-date 2 available 2:\n%s", out)
	}

	eventually(t, 2*time.Minute, "the DaemonSet to run one ready pod per edge node", func() error {
		ds, err := client.AppsV1().DaemonSets(ns).Get(ctx, "edge-agent", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ds.Status.DesiredNumberScheduled != 2 || ds.Status.NumberReady != 2 {
			return fmt.Errorf("daemonset desired %d ready %d, want 2 and 2", ds.Status.DesiredNumberScheduled, ds.Status.NumberReady)
		}
		return nil
	}, procs...)
	pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: labels.Set(agentTemplate.Labels).String()})
	if err != nil {
		t.Fatal(err)
	}
	perNode := map[string]int{}
	for _, p := range pods.Items {
		perNode[p.Spec.NodeName]++
	}
	for _, a := range agents {
		if perNode[a.node] != 1 {
			t.Errorf("DaemonSet pods per node: %v, want one on %s", perNode, a.node)
		}
	}

	// Every pod the scheduler placed reached its node's agent, which
	// reported it: the agent's own output says so.
	all, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range all.Items {
		for _, a := range agents {
			if a.node != p.Spec.NodeName {
				continue
			}
			eventually(t, time.Minute, "agent "+a.node+" to hold pod "+p.Name, func() error {
				return agentHolds(a.proc, "Pod", ns+"/"+p.Name)
			}, procs...)
		}
	}
}

// TestOfflineEdgeKeepsItsPods stops an agent: Kubernetes' node lifecycle
// controller turns its Node Ready=Unknown and taints it unreachable, yet its
// pods outlive the eviction timeout (edge autonomy), and the agent back
// makes the Node Ready again with the taints gone and the same pods.
func TestOfflineEdgeKeepsItsPods(t *testing.T) {
	in := install(t)
	client := testcluster.Client(t)
	group := testcluster.UniqueName("g")
	// A zone of their own with one node staying online: the node
	// lifecycle controller taints (and would evict) only in zones that are
	// not wholly disrupted.
	zone := map[string]string{"e2e.edgesync.io/group": group, corev1.LabelTopologyZone: group}
	online := in.startAgent(t, client, testcluster.UniqueName("edge-on"), zone)
	offline := in.startAgent(t, client, testcluster.UniqueName("edge-off"), zone)
	ns := testcluster.Namespace(t, client)
	createWebConfig(t, client, ns)
	ctx := t.Context()

	// A finite tolerance on the node that stays online: its pods get it.
	if _, err := client.CoreV1().Nodes().Patch(ctx, online.node, "application/merge-patch+json",
		[]byte(`{"metadata":{"annotations":{"`+autonomy.AnnotationTolerationSeconds+`":"600"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	replicas := int32(2)
	template := webPodSpec(group)
	// One pod per node: the scheduler spreads them by hostname.
	template.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
		MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
		LabelSelector: &metav1.LabelSelector{MatchLabels: template.Labels},
	}}
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Template: template,
			Selector: &metav1.LabelSelector{MatchLabels: template.Labels}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	procs := []*process{in.server, online.proc, offline.proc}
	var offlinePod corev1.Pod
	eventually(t, 2*time.Minute, "a running pod on each node with the tolerations autonomy sets", func() error {
		pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		onNode := map[string]corev1.Pod{}
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				onNode[p.Spec.NodeName] = p
			}
		}
		for node, want := range map[string]string{online.node: "600", offline.node: "for ever"} {
			p, ok := onNode[node]
			if !ok {
				return fmt.Errorf("no running pod on %s yet", node)
			}
			if got := unreachableToleration(p); got != want {
				return fmt.Errorf("pod %s on %s tolerates unreachable for %s, want %s", p.Name, node, got, want)
			}
		}
		offlinePod = onNode[offline.node]
		return nil
	}, procs...)

	offline.proc.stop(t)
	stoppedAt := time.Now()
	procs = []*process{in.server, online.proc}
	eventually(t, 2*time.Minute, "the node lifecycle controller to mark "+offline.node+" Unknown and unreachable", func() error {
		if err := nodeReady(ctx, client, offline.node, corev1.ConditionUnknown); err != nil {
			return err
		}
		n, err := client.CoreV1().Nodes().Get(ctx, offline.node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !hasTaint(n, corev1.TaintNodeUnreachable, corev1.TaintEffectNoExecute) {
			return fmt.Errorf("node %s has taints %v, want %s:NoExecute", offline.node, n.Spec.Taints, corev1.TaintNodeUnreachable)
		}
		return nil
	}, procs...)
	t.Logf("%s Unknown and tainted %s after its agent stopped", offline.node, time.Since(stoppedAt).Round(time.Second))

	// Past the eviction timeout (make test: 30 s for pods without their
	// own toleration) the pod is still bound and not being deleted.
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		p, err := client.CoreV1().Pods(ns).Get(ctx, offlinePod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("pod %s on the offline node: %v", offlinePod.Name, err)
		}
		if p.DeletionTimestamp != nil || p.UID != offlinePod.UID {
			t.Fatalf("pod %s on the offline node was evicted (deletionTimestamp %v)", p.Name, p.DeletionTimestamp)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}

	offline.start(t)
	procs = append(procs, offline.proc)
	eventually(t, 2*time.Minute, offline.node+" back Ready without the unreachable taints", func() error {
		if err := nodeReady(ctx, client, offline.node, corev1.ConditionTrue); err != nil {
			return err
		}
		n, err := client.CoreV1().Nodes().Get(ctx, offline.node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, taint := range n.Spec.Taints {
			if taint.Key == corev1.TaintNodeUnreachable || taint.Key == corev1.TaintNodeNotReady {
				return fmt.Errorf("node %s still has taint %s:%s", n.Name, taint.Key, taint.Effect)
			}
		}
		return nil
	}, procs...)
	p, err := client.CoreV1().Pods(ns).Get(ctx, offlinePod.Name, metav1.GetOptions{})
	if err != nil || p.UID != offlinePod.UID || p.Spec.NodeName != offline.node {
		t.Fatalf("after the node came back, pod %s: %v", offlinePod.Name, err)
	}
	// The restarted agent served the pod from its store.
	eventually(t, time.Minute, "the restarted agent to hold the pod", func() error {
		return agentHolds(offline.proc, "Pod", ns+"/"+offlinePod.Name)
	}, procs...)
}

// agentHolds reports whether the agent printed that it received (ADDED) or
// holds from its store (HELD) the object.
func agentHolds(agent *process, kind, nsName string) error {
	data, err := os.ReadFile(agent.log)
	if err != nil {
		return err
	}
	if regexp.MustCompile(`(?m)\s(?:ADDED|HELD)\s+` + kind + `\s+` + regexp.QuoteMeta(nsName) + ` rv=`).Match(data) {
		return nil
	}
	return fmt.Errorf("agent has not printed ADDED or HELD %s %s yet", kind, nsName)
}

// unreachableToleration describes how long p tolerates the unreachable
// NoExecute taint: "for ever", seconds, or "not at all".
func unreachableToleration(p corev1.Pod) string {
	for _, t := range p.Spec.Tolerations {
		if t.Key == corev1.TaintNodeUnreachable && t.Effect == corev1.TaintEffectNoExecute {
			if t.TolerationSeconds == nil {
				return "for ever"
			}
			return fmt.Sprint(*t.TolerationSeconds)
		}
	}
	return "not at all"
}
