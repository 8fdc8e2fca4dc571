// Command devcluster runs a real Kubernetes control plane on loopback: an
// embedded etcd, a real kube-apiserver (ServiceAccount admission on), and
// kube-controller-manager and kube-scheduler, all built from the same
// k8s.io/kubernetes module version. It is what edgesync's integration tests
// and `make dev` run against. There is no kubelet: edgesync plays the
// kubelet's part for edge nodes.
//
// The apiserver runs in this process; the controller-manager (every default
// controller, with per-controller ServiceAccount credentials) and the
// scheduler run as child processes of this binary (the hidden subcommands
// kube-controller-manager and kube-scheduler), each with its own kubeconfig
// and client certificate from the devcluster's PKI and its log in DIR.
// Leader election is off. The node lifecycle timings are flags so that
// tests can shorten them.
//
// Usage:
//
//	devcluster run  --dir DIR            start, print one ready line, stop on SIGINT/SIGTERM
//	devcluster exec --dir DIR -- CMD...  start, run CMD with the cluster's environment, stop
//
// In both modes the admin kubeconfig is DIR/kubeconfig, the CRDs found in
// --crds are applied before the ready line, and DIR/ready exists while the
// cluster is up. exec exports KUBECONFIG and EDGESYNC_TEST_KUBECONFIG to CMD,
// EDGESYNC_TEST_DEVCLUSTER_PKI (DIR/pki) and EDGESYNC_TEST_KUBELET_CLIENT_CA
// (the CA that signs the certificate the apiserver presents to kubelets,
// DIR/pki/apiserver-kubelet-client.crt), and exits with CMD's exit code.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	if ok, err := componentMain(os.Args[1:]); ok {
		if err != nil {
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:]); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			os.Exit(exitErr.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "devcluster:", err)
		os.Exit(1)
	}
}

func usage() error {
	return errors.New("usage: devcluster run|exec [--dir DIR] [--port N] [--crds DIR] [--node-monitor-grace-period D] [--node-monitor-period D]\n" +
		"       [--default-unreachable-toleration-seconds N] [--default-not-ready-toleration-seconds N] [-- CMD ARGS...]")
}

func run(args []string) error {
	if len(args) == 0 {
		return usage()
	}
	mode := args[0]
	if mode != "run" && mode != "exec" {
		return usage()
	}
	fs := flag.NewFlagSet("devcluster "+mode, flag.ContinueOnError)
	dir := fs.String("dir", ".dev/cluster", "directory for etcd data, certificates, logs and the kubeconfig")
	port := fs.Int("port", 0, "kube-apiserver port on 127.0.0.1 (0 picks a free one)")
	crds := fs.String("crds", "deploy/crds", "directory of CustomResourceDefinition YAML files to apply (skipped when missing)")
	var timings lifecycleTimings
	fs.DurationVar(&timings.nodeMonitorGracePeriod, "node-monitor-grace-period", 0,
		"how long a node may go without a Lease renewal before it turns Ready=Unknown (0: Kubernetes' default, 50s)")
	fs.DurationVar(&timings.nodeMonitorPeriod, "node-monitor-period", 0,
		"how often the node lifecycle controller checks nodes (0: Kubernetes' default, 5s)")
	fs.IntVar(&timings.unreachableTolerationSeconds, "default-unreachable-toleration-seconds", 0,
		"eviction: how long pods without a toleration of their own stay on an unreachable node (0: Kubernetes' default, 300)")
	fs.IntVar(&timings.notReadyTolerationSeconds, "default-not-ready-toleration-seconds", 0,
		"eviction: how long pods without a toleration of their own stay on a not-ready node (0: Kubernetes' default, 300)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	command := fs.Args()
	if mode == "exec" && len(command) == 0 {
		return errors.New("exec needs a command after --")
	}
	absDir, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}

	// The first signal stops the cluster cleanly; a second exits at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		second := make(chan os.Signal, 1)
		signal.Notify(second, os.Interrupt, syscall.SIGTERM)
		<-second
		os.Exit(130)
	}()

	start := time.Now()
	cluster, err := startCluster(ctx, clusterConfig{dir: absDir, port: *port, crdDir: *crds, timings: timings})
	if err != nil {
		return err
	}
	readyFile := filepath.Join(absDir, "ready")
	if err := os.WriteFile(readyFile, []byte(cluster.kubeconfig+"\n"), 0o644); err != nil {
		cluster.stop()
		return err
	}
	defer os.Remove(readyFile)
	fmt.Printf("devcluster ready in %.1fs: apiserver %s, KUBECONFIG=%s\n",
		time.Since(start).Seconds(), cluster.url, cluster.kubeconfig)

	var runErr error
	switch mode {
	case "run":
		select {
		case <-ctx.Done():
		case err := <-cluster.failed:
			runErr = err
		}
	case "exec":
		cmd := exec.CommandContext(ctx, command[0], command[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(),
			"KUBECONFIG="+cluster.kubeconfig,
			"EDGESYNC_TEST_KUBECONFIG="+cluster.kubeconfig,
			// The CA that signs the apiserver's kubelet client
			// certificate, for tests of edgesync's kubelet endpoint.
			"EDGESYNC_TEST_KUBELET_CLIENT_CA="+filepath.Join(absDir, "pki", "ca.crt"),
			"EDGESYNC_TEST_DEVCLUSTER_PKI="+filepath.Join(absDir, "pki"))
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 30 * time.Second
		runErr = cmd.Run()
	}
	fmt.Println("devcluster: stopping")
	cluster.stop()
	return runErr
}
