package realnode

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// KubeletOptions say how to run a kubelet for a node.
type KubeletOptions struct {
	// Binary is the kubelet (bin/kubelet, `make kubelet`).
	Binary string
	// Dir holds the kubelet's root and certificate directories, its
	// configuration, pod logs and its own log. Required.
	Dir string
	// Node is the node's name (--hostname-override). Required.
	Node string
	// Kubeconfig is what the agent wrote for its local API; empty runs
	// the kubelet standalone (static pods only).
	Kubeconfig string
	// StaticPodDir, when set, is where the kubelet reads static pods.
	StaticPodDir string
	// Runtime is the containerd the kubelet runs pods with. Required.
	Runtime *Containerd
	// Port is the kubelet server's port on 127.0.0.1; HealthzPort its
	// /healthz port. Required.
	Port, HealthzPort int
	// ClientCAFile is the CA of the only client the kubelet's server lets
	// in (the agent's certificate); TLSCertFile and TLSKeyFile its serving
	// certificate. Required.
	ClientCAFile, TLSCertFile, TLSKeyFile string
	// Labels are the Node's labels when the kubelet registers it
	// (--node-labels).
	Labels map[string]string
}

// Config is the KubeletConfiguration a real edge node runs with here:
// cgroup v1 with the cgroupfs driver (no systemd), no QoS cgroups or
// allocatable enforcement, no eviction or image garbage collection
// thresholds that a test machine's disk would trip, its servers on
// loopback only, and its API open to one client certificate (the agent's)
// with no further authorization: the cloud has authorized each request
// before it reached the node. deploy/edge/kubelet-config.yaml is the same
// for a machine set up by hand.
func (o KubeletOptions) Config() map[string]any {
	cfg := map[string]any{
		"apiVersion":                  "kubelet.config.k8s.io/v1beta1",
		"kind":                        "KubeletConfiguration",
		"address":                     "127.0.0.1",
		"port":                        o.Port,
		"readOnlyPort":                0,
		"healthzBindAddress":          "127.0.0.1",
		"healthzPort":                 o.HealthzPort,
		"tlsCertFile":                 o.TLSCertFile,
		"tlsPrivateKeyFile":           o.TLSKeyFile,
		"authentication":              map[string]any{"x509": map[string]any{"clientCAFile": o.ClientCAFile}, "webhook": map[string]any{"enabled": false}, "anonymous": map[string]any{"enabled": false}},
		"authorization":               map[string]any{"mode": "AlwaysAllow"},
		"containerRuntimeEndpoint":    "unix://" + o.Runtime.Socket,
		"imageServiceEndpoint":        "unix://" + o.Runtime.Socket,
		"cgroupDriver":                "cgroupfs",
		"failCgroupV1":                false,
		"failSwapOn":                  false,
		"cgroupsPerQOS":               false,
		"enforceNodeAllocatable":      []string{},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"evictionHard": map[string]string{
			"memory.available": "0%", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
			"imagefs.available": "0%", "imagefs.inodesFree": "0%",
		},
		"resolvConf":          "",
		"podLogsDir":          filepath.Join(o.Dir, "pod-logs"),
		"registerNode":        true,
		"serializeImagePulls": false,
		// The kubelet's defaults, written out: the node status every 10s
		// when it changed, once a minute otherwise.
		"nodeStatusUpdateFrequency": "10s",
		"nodeStatusReportFrequency": "1m",
		"syncFrequency":             "20s",
		"shutdownGracePeriod":       "0s",
		"logging":                   map[string]any{"format": "text", "verbosity": 1},
	}
	if o.StaticPodDir != "" {
		cfg["staticPodPath"] = o.StaticPodDir
	}
	return cfg
}

// Kubelet is a running kubelet.
type Kubelet struct {
	opts KubeletOptions
	proc *process
}

// StartKubelet writes the kubelet's configuration and starts it, and waits
// until its /healthz answers.
func StartKubelet(ctx context.Context, opts KubeletOptions) (*Kubelet, error) {
	if opts.Binary == "" || opts.Dir == "" || opts.Node == "" || opts.Runtime == nil ||
		opts.Port == 0 || opts.HealthzPort == 0 || opts.ClientCAFile == "" || opts.TLSCertFile == "" {
		return nil, errors.New("realnode: KubeletOptions are incomplete")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	opts.Dir = dir
	for _, d := range []string{"root", "certs", "pod-logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	cfg, err := yaml.Marshal(opts.Config())
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "kubelet-config.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return nil, err
	}
	k := &Kubelet{opts: opts}
	if err := k.start(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Kubelet) start(ctx context.Context) error {
	o := k.opts
	args := []string{
		"--config=" + filepath.Join(o.Dir, "kubelet-config.yaml"),
		"--root-dir=" + filepath.Join(o.Dir, "root"),
		"--cert-dir=" + filepath.Join(o.Dir, "certs"),
		"--hostname-override=" + o.Node,
	}
	if o.Kubeconfig != "" {
		args = append(args, "--kubeconfig="+o.Kubeconfig)
	}
	if len(o.Labels) > 0 {
		var pairs []string
		for k, v := range o.Labels {
			pairs = append(pairs, k+"="+v)
		}
		args = append(args, "--node-labels="+strings.Join(pairs, ","))
	}
	var err error
	k.proc, err = startProcess(o.Dir, "kubelet", o.Binary, args...)
	if err != nil {
		return err
	}
	if err := k.waitHealthy(ctx); err != nil {
		k.Stop()
		return err
	}
	return nil
}

// Restart stops the kubelet and starts it again with the same
// configuration (its containers keep running meanwhile).
func (k *Kubelet) Restart(ctx context.Context) error {
	k.Stop()
	return k.start(ctx)
}

// Log is the kubelet's output (every run's).
func (k *Kubelet) Log() string { return k.proc.Log }

// Pid is the kubelet's process id.
func (k *Kubelet) Pid() int { return k.proc.Pid() }

// Exited says how the kubelet ended, or nil while it runs.
func (k *Kubelet) Exited() error { return k.proc.exited() }

// URL is the kubelet server's address.
func (k *Kubelet) URL() string { return fmt.Sprintf("https://127.0.0.1:%d", k.opts.Port) }

// waitHealthy polls /healthz (plain HTTP on loopback) until it answers 200.
func (k *Kubelet) waitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", k.opts.HealthzPort)
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := k.proc.exited(); err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubelet not healthy at %s: %w (log: %s)", url, ctx.Err(), k.proc.Log)
		case <-tick.C:
		}
	}
}

// Stop stops the kubelet by its pid (its containers keep running) and
// unmounts what it mounted under its directory.
func (k *Kubelet) Stop() {
	k.proc.stop(15 * time.Second)
	_ = unmountUnder(filepath.Join(k.opts.Dir, "root"))
}
