package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/internal/bench/cluster"
	"github.com/edgesync/edgesync/internal/bench/measure"
	"github.com/edgesync/edgesync/server/pki"
)

// portForwardResult is the port-forward benchmark's figure: one transfer
// through kubectl port-forward, the kube-apiserver, edgesync-server's
// kubelet endpoint, a tunnel and the edge agent, from a port on the edge
// host's loopback.
type portForwardResult struct {
	Bytes           int64   `json:"bytes"`
	Seconds         float64 `json:"seconds"`
	MBPerSecond     float64 `json:"mb_per_second"`
	ServerRSSBefore int64   `json:"server_rss_bytes_before"`
	ServerRSSPeak   int64   `json:"server_rss_bytes_peak"`
	AgentRSSPeak    int64   `json:"agent_rss_bytes_peak"`
}

// portForwardMain runs the port-forward benchmark against a devcluster of
// its own with the edgesync-server, edgesync-agent and kubectl binaries
// next to this one.
func portForwardMain(ctx context.Context, args []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bin := filepath.Dir(self)
	fs := flag.NewFlagSet("portforward", flag.ContinueOnError)
	out := fs.String("out", ".tmp/bench-portforward", "directory for the cluster, logs and portforward.json")
	mb := fs.Int("mb", 100, "megabytes to transfer")
	devcluster := fs.String("devcluster", filepath.Join(bin, "devcluster"), "devcluster binary")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := os.RemoveAll(*out); err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	*out, _ = filepath.Abs(*out)
	fmt.Fprintln(os.Stderr, "starting devcluster")
	cl, err := cluster.Start(ctx, *devcluster, filepath.Join(*out, "cluster"))
	if err != nil {
		return err
	}
	defer cl.Stop()

	const node = "bench-pf"
	pkiDir := filepath.Join(*out, "pki")
	if err := writeBenchPKI(pkiDir, node); err != nil {
		return err
	}
	config := filepath.Join(*out, "server.yaml")
	if err := os.WriteFile(config, []byte("controllers:\n  disableDevices: true\n"), 0o644); err != nil {
		return err
	}
	grpcPort, err := freePort()
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(grpcPort)
	server, err := startProcess(filepath.Join(*out, "server.log"), filepath.Join(bin, "edgesync-server"),
		"--config", config, "--listen", addr, "--http-listen", "",
		"--tls-ca", filepath.Join(pkiDir, "ca.crt"), "--tls-cert", filepath.Join(pkiDir, "server.crt"), "--tls-key", filepath.Join(pkiDir, "server.key"),
		"--kubeconfig", cl.Kubeconfig, "--server-id", "bench", "--log-level", "warn",
		"--kubelet-listen", "127.0.0.1:0", "--kubelet-client-ca", filepath.Join(*out, "cluster", "pki", "ca.crt"))
	if err != nil {
		return err
	}
	defer server.stop()
	agent, err := startProcess(filepath.Join(*out, "agent.log"), filepath.Join(bin, "edgesync-agent"),
		"--server", addr, "--node", node, "--ca", filepath.Join(pkiDir, "ca.crt"),
		"--cert", filepath.Join(pkiDir, "node-"+node+".crt"), "--key", filepath.Join(pkiDir, "node-"+node+".key"),
		"--store", filepath.Join(*out, "store"), "--log-level", "warn")
	if err != nil {
		return err
	}
	defer agent.stop()

	// The source on the edge host's loopback: every connection gets the
	// whole payload. The pod declares its port: a simulated pod's
	// port-forward reaches only the ports it declares.
	total := int64(*mb) << 20
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer lis.Close()
	go func() {
		chunk := make([]byte, 32<<10)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.CopyN(c, infinite{chunk}, total)
			}()
		}
	}()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "source", Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{corev1.LabelHostname: node},
			Tolerations:  []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "source", Image: "source",
				Ports: []corev1.ContainerPort{{ContainerPort: int32(lis.Addr().(*net.TCPAddr).Port)}}}},
		},
	}
	if _, err := cl.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "waiting for the pod to run on the edge node")
	if err := waitFor(ctx, 2*time.Minute, "the pod to run on "+node, func() bool {
		p, err := cl.Client.CoreV1().Pods("default").Get(ctx, "source", metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodRunning {
			return false
		}
		n, err := cl.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil && n.Status.DaemonEndpoints.KubeletEndpoint.Port != 0
	}); err != nil {
		return err
	}

	local, err := freePort()
	if err != nil {
		return err
	}
	pfCtx, cancelPF := context.WithCancel(ctx)
	defer cancelPF()
	pf := exec.CommandContext(pfCtx, filepath.Join(bin, "kubectl"), "port-forward", "pod/source",
		fmt.Sprintf("%d:%d", local, lis.Addr().(*net.TCPAddr).Port))
	pf.Env = append(os.Environ(), "KUBECONFIG="+cl.Kubeconfig)
	pfOut, err := pf.StdoutPipe()
	if err != nil {
		return err
	}
	if err := pf.Start(); err != nil {
		return err
	}
	defer func() { cancelPF(); _ = pf.Wait() }()
	ready := make(chan struct{})
	go func() {
		s := bufio.NewScanner(pfOut)
		once := sync.Once{}
		for s.Scan() {
			if strings.HasPrefix(s.Text(), "Forwarding from") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("kubectl port-forward did not listen within 30s")
	case <-ctx.Done():
		return ctx.Err()
	}

	var res portForwardResult
	before, err := measure.ReadProc(server.cmd.Process.Pid)
	if err != nil {
		return err
	}
	res.ServerRSSBefore = before.RSSBytes
	stopSampling := sampleRSS(server.cmd.Process.Pid, &res.ServerRSSPeak, agent.cmd.Process.Pid, &res.AgentRSSPeak)
	fmt.Fprintf(os.Stderr, "transferring %d MB through kubectl port-forward\n", *mb)
	start := time.Now()
	conn, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(local))
	if err != nil {
		stopSampling()
		return err
	}
	res.Bytes, err = io.Copy(io.Discard, conn)
	res.Seconds = time.Since(start).Seconds()
	conn.Close()
	stopSampling()
	if err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	if res.Bytes != total {
		return fmt.Errorf("transfer: received %d bytes of %d", res.Bytes, total)
	}
	res.MBPerSecond = float64(res.Bytes) / (1 << 20) / res.Seconds
	fmt.Printf("port-forward %d MB: %.1f MB/s (%.1fs); edgesync-server RSS %.1f MB before, %.1f MB peak; edgesync-agent RSS peak %.1f MB\n",
		*mb, res.MBPerSecond, res.Seconds, float64(res.ServerRSSBefore)/(1<<20), float64(res.ServerRSSPeak)/(1<<20), float64(res.AgentRSSPeak)/(1<<20))
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(*out, "portforward.json"), data, 0o644)
}

// infinite reads as endless copies of its chunk.
type infinite struct{ chunk []byte }

func (r infinite) Read(p []byte) (int, error) { return copy(p, r.chunk), nil }

// sampleRSS records the peak resident memory of two processes every 20ms
// until the returned function is called.
func sampleRSS(pidA int, peakA *int64, pidB int, peakB *int64) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if ps, err := measure.ReadProc(pidA); err == nil {
				*peakA = max(*peakA, ps.RSSBytes)
			}
			if ps, err := measure.ReadProc(pidB); err == nil {
				*peakB = max(*peakB, ps.RSSBytes)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }
}

// benchProcess is a binary the benchmark runs, its output in a log file.
type benchProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProcess(logPath, binary string, args ...string) (*benchProcess, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", filepath.Base(binary), err)
	}
	p := &benchProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *benchProcess) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// writeBenchPKI writes a CA, a server certificate for 127.0.0.1 and node's
// certificate into dir.
func writeBenchPKI(dir, node string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := pki.NewCA("edgesync-bench-ca")
	if err != nil {
		return err
	}
	if err := ca.KeyPair().WriteFiles(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), true); err != nil {
		return err
	}
	srv, err := ca.IssueServer([]string{"127.0.0.1", "localhost"})
	if err != nil {
		return err
	}
	if err := srv.WriteFiles(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), true); err != nil {
		return err
	}
	n, err := ca.IssueNode(node)
	if err != nil {
		return err
	}
	return n.WriteFiles(filepath.Join(dir, "node-"+node+".crt"), filepath.Join(dir, "node-"+node+".key"), true)
}
