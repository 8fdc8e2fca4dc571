// Package cluster gives edgesync-bench a real Kubernetes control plane: it
// runs bin/devcluster (etcd and kube-apiserver) as a child process, creates
// the edge nodes, pods and ConfigMaps a scenario needs, and reads the
// apiserver's own /metrics so that the benchmark can count the requests the
// server's controllers make. Stop removes everything it started.
package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/edgesync/edgesync/internal/bench/measure"
)

// EdgeLabel marks edge nodes (controllers.DefaultEdgeLabel).
const EdgeLabel = "node-role.kubernetes.io/edge"

// Cluster is a running devcluster.
type Cluster struct {
	Kubeconfig string
	Client     kubernetes.Interface
	cmd        *exec.Cmd
	dir        string
	done       chan error
}

// Start runs devcluster from binary with its data in dir and waits for its
// ready line. Its output goes to dir/devcluster.log. It installs no CRDs:
// the benchmark runs the controllers without devices.
func Start(ctx context.Context, binary, dir string) (*Cluster, error) {
	return StartWithCRDs(ctx, binary, dir, filepath.Join(dir, "no-crds"))
}

// StartWithCRDs is Start with the CustomResourceDefinitions of the YAML
// files in crdDir installed (established) before the ready line.
func StartWithCRDs(ctx context.Context, binary, dir, crdDir string) (*Cluster, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "devcluster.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, "run", "--dir", dir, "--crds", crdDir)
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start devcluster: %w", err)
	}
	c := &Cluster{cmd: cmd, dir: dir, done: make(chan error, 1)}
	readyLine := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() {
			fmt.Fprintln(logFile, sc.Text())
			if !sent && strings.Contains(sc.Text(), "KUBECONFIG=") {
				readyLine <- sc.Text()
				sent = true
			}
		}
		if !sent {
			close(readyLine)
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() {
		c.done <- cmd.Wait()
		logFile.Close()
	}()
	timeout := time.NewTimer(3 * time.Minute)
	defer timeout.Stop()
	select {
	case line, ok := <-readyLine:
		if !ok {
			c.Stop()
			return nil, fmt.Errorf("devcluster exited before it was ready; see %s", filepath.Join(dir, "devcluster.log"))
		}
		_, kc, _ := strings.Cut(line, "KUBECONFIG=")
		c.Kubeconfig = strings.TrimSpace(kc)
	case <-timeout.C:
		c.Stop()
		return nil, errors.New("devcluster not ready within 3 minutes")
	case <-ctx.Done():
		c.Stop()
		return nil, ctx.Err()
	}
	cfg, err := c.RESTConfig()
	if err != nil {
		c.Stop()
		return nil, err
	}
	if c.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// RESTConfig returns an admin client configuration with room for the
// benchmark's bulk creates.
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", c.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	return cfg, nil
}

// Stop stops the control plane and removes its data.
func (c *Cluster) Stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	_ = os.RemoveAll(filepath.Join(c.dir, "etcd"))
}

// Metrics scrapes the apiserver's /metrics.
func (c *Cluster) Metrics(ctx context.Context) (measure.Metrics, error) {
	raw, err := c.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("scrape apiserver metrics: %w", err)
	}
	return measure.ParseMetrics(strings.NewReader(string(raw)))
}

// Requests counts apiserver requests with verb for resource (and
// subresource, "" for the object itself).
func Requests(m measure.Metrics, verb, resource, subresource string) float64 {
	return m.Sum("apiserver_request_total", map[string]string{"verb": verb, "resource": resource, "subresource": subresource})
}

// Workload is what a scenario needs in the cluster: edge nodes, one pod
// per node that mounts the shared ConfigMap Base, and for the first
// FanoutNodes also ConfigMap Fanout.
type Workload struct {
	Namespace   string
	Nodes       []string
	FanoutNodes int
	Base        string
	Fanout      string
}

// Create creates the workload, many requests at a time.
func (c *Cluster) Create(ctx context.Context, w Workload) error {
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: w.Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace: %w", err)
	}
	// ServiceAccount admission refuses pods until the controller-manager
	// has created the namespace's default ServiceAccount.
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(w.Namespace).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("namespace %s has no default ServiceAccount: %w", w.Namespace, err)
	}
	for _, name := range []string{w.Base, w.Fanout} {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: w.Namespace, Name: name}, Data: map[string]string{"v": "0"}}
		if _, err := c.Client.CoreV1().ConfigMaps(w.Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create configmap %s: %w", name, err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i, node := range w.Nodes {
		g.Go(func() error {
			n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Labels: map[string]string{EdgeLabel: ""}}}
			if _, err := c.Client.CoreV1().Nodes().Create(gctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create node %s: %w", node, err)
			}
			volumes := []corev1.Volume{{Name: "base", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: w.Base}}}}}
			if i < w.FanoutNodes {
				volumes = append(volumes, corev1.Volume{Name: "fanout", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: w.Fanout}}}})
			}
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: w.Namespace, Name: "pod-" + node},
				Spec: corev1.PodSpec{
					NodeName:   node,
					Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
					Volumes:    volumes,
				},
			}
			if _, err := c.Client.CoreV1().Pods(w.Namespace).Create(gctx, pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create pod for %s: %w", node, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// UpdateConfigMap sets key=value in ConfigMap ns/name with one merge patch
// and returns the new resource version.
func (c *Cluster) UpdateConfigMap(ctx context.Context, ns, name, key, value string) (string, error) {
	patch, err := json.Marshal(map[string]any{"data": map[string]string{key: value}})
	if err != nil {
		return "", err
	}
	out, err := c.Client.CoreV1().ConfigMaps(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return "", fmt.Errorf("update configmap %s/%s: %w", ns, name, err)
	}
	return out.ResourceVersion, nil
}

// PID is the devcluster process's id (etcd and kube-apiserver run in it).
func (c *Cluster) PID() int { return c.cmd.Process.Pid }
