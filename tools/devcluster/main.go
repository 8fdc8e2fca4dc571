// Command devcluster runs a real Kubernetes control plane on loopback: an
// embedded etcd and a real kube-apiserver, built from the Kubernetes Go
// modules. It is what edgesync's integration tests and `make dev` run
// against. There is no scheduler, controller-manager or kubelet: tests bind
// pods to nodes themselves, and edgesync plays the kubelet's part.
//
// Usage:
//
//	devcluster run  --dir DIR            start, print one ready line, stop on SIGINT/SIGTERM
//	devcluster exec --dir DIR -- CMD...  start, run CMD with the cluster's environment, stop
//
// In both modes the admin kubeconfig is DIR/kubeconfig, the CRDs found in
// --crds are applied before the ready line, and DIR/ready exists while the
// cluster is up. exec exports KUBECONFIG and EDGESYNC_TEST_KUBECONFIG to CMD
// and exits with CMD's exit code.
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
	return errors.New("usage: devcluster run|exec [--dir DIR] [--port N] [--crds DIR] [-- CMD ARGS...]")
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
	cluster, err := startCluster(ctx, clusterConfig{dir: absDir, port: *port, crdDir: *crds})
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
			"EDGESYNC_TEST_KUBECONFIG="+cluster.kubeconfig)
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 30 * time.Second
		runErr = cmd.Run()
	}
	fmt.Println("devcluster: stopping")
	cluster.stop()
	return runErr
}
