// Command devnode runs the real parts of `make dev`'s edge-1 (package
// realnode): it starts a containerd of its own with the locally built
// images, writes DIR/containerd-ready (or exits non-zero with the reason,
// and `make dev` runs edge-1 simulated), waits for the agent to write the
// kubelet's kubeconfig, starts the kubelet, writes DIR/kubelet-ready, and
// stops both by pid and cleans up on SIGINT or SIGTERM.
//
//	devnode --dir DIR --node NODE --kubelet BIN --kubelet-dir AGENT_KUBELET_DIR --port N --healthz-port N
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/edgesync/edgesync/internal/realnode"
)

func main() {
	var (
		dir, node, kubelet, agentDir string
		port, healthzPort            int
	)
	flag.StringVar(&dir, "dir", "", "directory for containerd and the kubelet (required)")
	flag.StringVar(&node, "node", "", "node name (required)")
	flag.StringVar(&kubelet, "kubelet", "bin/kubelet", "the kubelet binary")
	flag.StringVar(&agentDir, "kubelet-dir", "", "the agent's --kubelet-dir: its kubeconfig and pki (required)")
	flag.IntVar(&port, "port", 10250, "the kubelet's port on 127.0.0.1")
	flag.IntVar(&healthzPort, "healthz-port", 10248, "the kubelet's healthz port on 127.0.0.1")
	flag.Parse()
	if dir == "" || node == "" || agentDir == "" {
		fmt.Fprintln(os.Stderr, "devnode: --dir, --node and --kubelet-dir are required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, dir, node, kubelet, agentDir, port, healthzPort); err != nil {
		fmt.Fprintln(os.Stderr, "devnode:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir, node, kubeletBin, agentDir string, port, healthzPort int) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range []string{"containerd-ready", "kubelet-ready"} {
		_ = os.Remove(filepath.Join(dir, f))
	}
	if _, err := os.Stat(kubeletBin); err != nil {
		return fmt.Errorf("no kubelet binary (make kubelet): %w", err)
	}
	start := time.Now()
	ctrd, err := realnode.StartContainerd(ctx, filepath.Join(dir, "containerd"))
	if err != nil {
		return fmt.Errorf("containerd cannot start here: %w", err)
	}
	defer func() {
		if err := ctrd.Stop(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "devnode: stop containerd:", err)
		}
	}()
	fmt.Printf("containerd %d ready in %.1fs: socket %s, pod network %s on bridge %s, images %s and %s imported\n",
		ctrd.Pid(), time.Since(start).Seconds(), ctrd.Socket, ctrd.Subnet, ctrd.Bridge, realnode.SandboxImage, realnode.WebImage)
	if err := os.WriteFile(filepath.Join(dir, "containerd-ready"), nil, 0o600); err != nil {
		return err
	}

	kubeconfig := filepath.Join(agentDir, "kubeconfig")
	if err := waitFile(ctx, kubeconfig); err != nil {
		return err
	}
	pki := filepath.Join(agentDir, "pki")
	k, err := realnode.StartKubelet(ctx, realnode.KubeletOptions{
		Binary: kubeletBin, Dir: filepath.Join(dir, "kubelet"), Node: node, Kubeconfig: kubeconfig, Runtime: ctrd,
		Port: port, HealthzPort: healthzPort,
		ClientCAFile: filepath.Join(pki, "kubelet-ca.crt"),
		TLSCertFile:  filepath.Join(pki, "kubelet-server.crt"), TLSKeyFile: filepath.Join(pki, "kubelet-server.key"),
	})
	if err != nil {
		return err
	}
	defer k.Stop()
	fmt.Printf("kubelet %d healthy: https://127.0.0.1:%d, log %s\n", k.Pid(), port, k.Log())
	if err := os.WriteFile(filepath.Join(dir, "kubelet-ready"), nil, 0o600); err != nil {
		return err
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Println("stopping the kubelet and containerd, removing the pods' containers")
			return nil
		case <-tick.C:
			if err := k.Exited(); err != nil {
				return err
			}
		}
	}
}

// waitFile waits until path exists.
func waitFile(ctx context.Context, path string) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("stopped before the agent wrote " + path)
		case <-tick.C:
		}
	}
}
