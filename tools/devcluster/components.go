package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/wait"
	controllermanagerapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// The controller-manager and the scheduler run as child processes of the
// devcluster binary (its hidden subcommands below), so that each has the
// process-wide registries (klog, metrics, feature gates) of its own, as in
// a real cluster, and a crash of one is seen as that component's failure.
const (
	controllerManagerCommand = "kube-controller-manager"
	schedulerCommand         = "kube-scheduler"
)

// componentMain runs a control-plane component in this process when args
// name one; ok is false otherwise.
func componentMain(args []string) (ok bool, err error) {
	if len(args) == 0 {
		return false, nil
	}
	var cmd *cobra.Command
	switch args[0] {
	case controllerManagerCommand:
		cmd = controllermanagerapp.NewControllerManagerCommand()
	case schedulerCommand:
		cmd = schedulerapp.NewSchedulerCommand()
	default:
		return false, nil
	}
	cmd.SetArgs(args[1:])
	cmd.SilenceUsage = true
	return true, cmd.Execute()
}

// lifecycleTimings are the node lifecycle settings tests shorten; zero
// values keep Kubernetes' defaults.
type lifecycleTimings struct {
	// nodeMonitorGracePeriod is how long a node may go without renewing
	// its Lease or status before its Ready condition turns Unknown
	// (kube-controller-manager --node-monitor-grace-period, 50s).
	nodeMonitorGracePeriod time.Duration
	// nodeMonitorPeriod is how often the node lifecycle controller checks
	// (--node-monitor-period, 5s).
	nodeMonitorPeriod time.Duration
	// unreachableTolerationSeconds and notReadyTolerationSeconds are the
	// tolerations the apiserver adds to pods that have none, that is how
	// long a pod stays on an unreachable or not-ready node before it is
	// evicted (kube-apiserver --default-unreachable-toleration-seconds and
	// --default-not-ready-toleration-seconds, 300).
	unreachableTolerationSeconds int
	notReadyTolerationSeconds    int
}

// component is one running child process.
type component struct {
	name    string
	cmd     *exec.Cmd
	log     *os.File
	healthz string
	exited  chan struct{} // closed when the process has exited
	err     error         // the exit result, set before exited closes
}

// startComponent starts `devcluster <name> args...` with its output in
// dir/<name>.log; healthPort is where it serves /healthz.
func startComponent(dir, name string, healthPort int, args []string) (*component, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	// The component dies with the devcluster, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &component{
		name:    name,
		cmd:     cmd,
		log:     log,
		healthz: fmt.Sprintf("https://127.0.0.1:%d/healthz", healthPort),
		exited:  make(chan struct{}),
	}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// waitHealthy polls the component's /healthz until it answers 200.
func (c *component) waitHealthy(ctx context.Context) error {
	client := &http.Client{
		Timeout: 2 * time.Second,
		// The component serves with a certificate it made itself.
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // loopback health probe
	}
	defer client.CloseIdleConnections()
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case <-c.exited:
			return false, fmt.Errorf("%s exited: %v (see %s)", c.name, c.err, c.log.Name())
		default:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.healthz, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("%s not healthy: %w (see %s)", c.name, err, c.log.Name())
	}
	return nil
}

// stop ends the component with SIGTERM, then SIGKILL after 10s.
func (c *component) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	c.log.Close()
}

// failure reports the component's exit; callers select on exited first.
func (c *component) failure() error {
	err := c.err
	if err == nil {
		err = errors.New("exited")
	}
	return fmt.Errorf("%s stopped: %w (see %s)", c.name, err, c.log.Name())
}

// controllerManagerArgs runs every default controller (serviceaccount,
// serviceaccount-token, root-ca-cert-publisher, namespace,
// garbage-collector, node-lifecycle, deployment, replicaset, daemonset,
// endpointslice, job and the rest of Kubernetes' defaults) under per-
// controller ServiceAccount credentials, as kubeadm does.
func controllerManagerArgs(pki *devPKI, kubeconfig, certDir string, port int, timings lifecycleTimings) []string {
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + certDir,
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + pki.saPrivateFile,
		"--root-ca-file=" + pki.caFile,
		"--controllers=*",
		"--profiling=false",
		"--v=1",
	}
	if timings.nodeMonitorGracePeriod > 0 {
		args = append(args, "--node-monitor-grace-period="+timings.nodeMonitorGracePeriod.String())
	}
	if timings.nodeMonitorPeriod > 0 {
		args = append(args, "--node-monitor-period="+timings.nodeMonitorPeriod.String())
	}
	return args
}

func schedulerArgs(kubeconfig, certDir string, port int) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + certDir,
		"--leader-elect=false",
		"--profiling=false",
		"--v=1",
	}
}
