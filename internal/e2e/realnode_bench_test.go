//go:build realnodebench

package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// benchPods is how many pods each runtime runs.
const benchPods = 10

// runtimeFigures are one runtime's measurements.
type runtimeFigures struct {
	Runtime string `json:"runtime"`
	Pods    int    `json:"pods"`
	// CreateToRunning is, per pod, from the pod's creation seen by a watch
	// to its Running status seen by the same watch.
	CreateToRunningP50 float64 `json:"create_to_running_p50_seconds"`
	CreateToRunningP99 float64 `json:"create_to_running_p99_seconds"`
	// Idle: with every pod Running, over IdleWindow.
	IdleWindow            float64 `json:"idle_window_seconds"`
	AgentIdleCPUPercent   float64 `json:"agent_idle_cpu_percent_of_one_core"`
	AgentIdleRSSBytes     int64   `json:"agent_idle_rss_bytes"`
	KubeletIdleCPUPercent float64 `json:"kubelet_idle_cpu_percent_of_one_core,omitempty"`
	KubeletIdleRSSBytes   int64   `json:"kubelet_idle_rss_bytes,omitempty"`
	// Rollout: a new template rolled over every pod.
	RolloutSeconds           float64 `json:"rollout_seconds"`
	AgentRolloutCPUPercent   float64 `json:"agent_rollout_cpu_percent_of_one_core"`
	AgentRolloutPeakRSS      int64   `json:"agent_rollout_peak_rss_bytes"`
	KubeletRolloutCPUPercent float64 `json:"kubelet_rollout_cpu_percent_of_one_core,omitempty"`
}

// TestRealNodeBenchmark measures a real node's agent beside its kubelet,
// and pod start latency on the real runtime beside the simulated one
// (`make bench`; build tag realnodebench keeps it out of `make test`).
// EDGESYNC_BENCH_OUT names the directory results go to.
func TestRealNodeBenchmark(t *testing.T) {
	in := installWithRealKubelet(t)
	client := testcluster.Client(t)
	window := 30 * time.Second
	if w := os.Getenv("EDGESYNC_BENCH_IDLE_WINDOW"); w != "" {
		d, err := time.ParseDuration(w)
		if err != nil {
			t.Fatal(err)
		}
		window = d
	}

	n := in.startRealNode(t, client)
	real := benchRuntime(t, client, "kubelet", n.group, n.agent.proc.cmd.Process.Pid, n.kubelet.Pid(), window)

	group := testcluster.UniqueName("g")
	sim := in.startAgent(t, client, testcluster.UniqueName("sim"), map[string]string{"e2e.edgesync.io/group": group})
	simulated := benchRuntime(t, client, "simulated", group, sim.proc.cmd.Process.Pid, 0, window)

	out := os.Getenv("EDGESYNC_BENCH_OUT")
	if out == "" {
		out = t.TempDir()
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent([]runtimeFigures{real, simulated}, "", "  ")
	if err := os.WriteFile(filepath.Join(out, "realnode.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	mib := func(v int64) string { return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20)) }
	fmt.Printf("\nA real edge node (%d pods, idle window %s): results in %s\n", benchPods, window, filepath.Join(out, "realnode.json"))
	fmt.Printf("  %-48s %-24s %s\n", "measure", "goal", "measured")
	fmt.Printf("  %-48s %-24s %s\n", "agent RSS beside the kubelet, idle, 10 pods", "<= 30 MiB", mib(real.AgentIdleRSSBytes)+" (kubelet "+mib(real.KubeletIdleRSSBytes)+")")
	fmt.Printf("  %-48s %-24s %.2f %% (kubelet %.2f %%)\n", "agent CPU beside the kubelet, idle", "<= 1 % of a core", real.AgentIdleCPUPercent, real.KubeletIdleCPUPercent)
	fmt.Printf("  %-48s %-24s %.2f %% over %.1f s, peak %s (kubelet %.2f %%)\n", "agent CPU during a rollout of 10 pods", "-", real.AgentRolloutCPUPercent, real.RolloutSeconds, mib(real.AgentRolloutPeakRSS), real.KubeletRolloutCPUPercent)
	fmt.Printf("  %-48s %-24s p50 %.2f s, p99 %.2f s\n", "create -> Running, real runtime", "-", real.CreateToRunningP50, real.CreateToRunningP99)
	fmt.Printf("  %-48s %-24s p50 %.2f s, p99 %.2f s (agent idle %.2f %%, %s)\n", "create -> Running, simulated runtime", "-", simulated.CreateToRunningP50, simulated.CreateToRunningP99, simulated.AgentIdleCPUPercent, mib(simulated.AgentIdleRSSBytes))
}

// benchRuntime runs benchPods pods on the nodes of group and measures.
func benchRuntime(t *testing.T, client kubernetes.Interface, runtime, group string, agentPid, kubeletPid int, window time.Duration) runtimeFigures {
	t.Helper()
	ctx := t.Context()
	ns := testcluster.Namespace(t, client)
	f := runtimeFigures{Runtime: runtime, Pods: benchPods, IdleWindow: window.Seconds()}

	// A watch sees each pod created and Running.
	w, err := client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var mu sync.Mutex
	created, running := map[types.UID]time.Time{}, map[types.UID]time.Time{}
	go func() {
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			now := time.Now()
			mu.Lock()
			if _, seen := created[p.UID]; !seen {
				created[p.UID] = now
			}
			if _, seen := running[p.UID]; !seen && p.Status.Phase == corev1.PodRunning {
				running[p.UID] = now
			}
			mu.Unlock()
		}
	}()
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](benchPods),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "bench"}},
			Strategy: appsv1.DeploymentStrategy{RollingUpdate: &appsv1.RollingUpdateDeployment{}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "bench"}},
				Spec: corev1.PodSpec{
					NodeSelector:                  map[string]string{controllers.DefaultEdgeLabel: "", "e2e.edgesync.io/group": group},
					Tolerations:                   []corev1.Toleration{{Key: controllers.DefaultEdgeLabel, Operator: corev1.TolerationOpExists}},
					TerminationGracePeriodSeconds: ptr.To[int64](1),
					DNSPolicy:                     corev1.DNSDefault,
					AutomountServiceAccountToken:  ptr.To(false),
					Containers: []corev1.Container{{
						Name: "web", Image: "edgesync.local/web:1", ImagePullPolicy: corev1.PullNever,
					}},
				},
			},
		},
	}
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAvailable := func(generation int64) {
		eventually(t, 5*time.Minute, runtime+": the bench Deployment available", func() error {
			d, err := client.AppsV1().Deployments(ns).Get(ctx, "bench", metav1.GetOptions{})
			if err != nil {
				return err
			}
			s := d.Status
			if s.ObservedGeneration < generation || s.UpdatedReplicas != benchPods || s.AvailableReplicas != benchPods || s.Replicas != benchPods {
				return fmt.Errorf("%d updated, %d available, %d in all", s.UpdatedReplicas, s.AvailableReplicas, s.Replicas)
			}
			return nil
		})
	}
	waitAvailable(1)
	mu.Lock()
	var lat []float64
	for uid, c := range created {
		if r, ok := running[uid]; ok {
			lat = append(lat, r.Sub(c).Seconds())
		}
	}
	mu.Unlock()
	slices.Sort(lat)
	if len(lat) > 0 {
		f.CreateToRunningP50 = lat[len(lat)/2]
		f.CreateToRunningP99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}

	// Idle with the pods running.
	settle := time.NewTimer(10 * time.Second)
	<-settle.C
	a0, k0, t0 := cpuSeconds(t, agentPid), cpuSeconds(t, kubeletPid), time.Now()
	idle := time.NewTimer(window)
	<-idle.C
	el := time.Since(t0).Seconds()
	f.AgentIdleCPUPercent = 100 * (cpuSeconds(t, agentPid) - a0) / el
	f.AgentIdleRSSBytes = rssBytes(t, agentPid)
	if kubeletPid != 0 {
		f.KubeletIdleCPUPercent = 100 * (cpuSeconds(t, kubeletPid) - k0) / el
		f.KubeletIdleRSSBytes = rssBytes(t, kubeletPid)
	}

	// A rollout: every pod replaced.
	peak := make(chan int64, 1)
	stopSampling := make(chan struct{})
	go func() {
		var p int64
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSampling:
				peak <- p
				return
			case <-tick.C:
				p = max(p, rssBytes(t, agentPid))
			}
		}
	}()
	a0, k0, t0 = cpuSeconds(t, agentPid), cpuSeconds(t, kubeletPid), time.Now()
	patch := `{"spec":{"template":{"metadata":{"annotations":{"bench/rollout":"` + strconv.FormatInt(time.Now().UnixNano(), 10) + `"}}}}}`
	d, err := client.AppsV1().Deployments(ns).Patch(ctx, "bench", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitAvailable(d.Generation)
	el = time.Since(t0).Seconds()
	close(stopSampling)
	f.RolloutSeconds = el
	f.AgentRolloutCPUPercent = 100 * (cpuSeconds(t, agentPid) - a0) / el
	f.AgentRolloutPeakRSS = <-peak
	if kubeletPid != 0 {
		f.KubeletRolloutCPUPercent = 100 * (cpuSeconds(t, kubeletPid) - k0) / el
	}
	if err := client.AppsV1().Deployments(ns).Delete(context.WithoutCancel(ctx), "bench", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	return f
}

// cpuSeconds is the user and system CPU time of pid (0: none).
func cpuSeconds(t *testing.T, pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command's closing parenthesis; utime and stime
	// are the 14th and 15th of the whole line.
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// rssBytes is the resident set size of pid.
func rssBytes(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}
