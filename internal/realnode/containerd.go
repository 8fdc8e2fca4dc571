package realnode

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	criv1 "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Namespace is the containerd namespace the CRI plugin (and so the
// kubelet) keeps its images and containers in.
const Namespace = "k8s.io"

// CNIBinDir is where Debian's containernetworking-plugins installs the
// plugins.
const CNIBinDir = "/usr/lib/cni"

// Containerd is a containerd of its own: root, state, socket, runc root,
// CNI configuration and IP allocations all under Dir, its pod network a
// bridge and subnet of its own, so that several run on one machine (each
// kubelet needs its own: two kubelets on one containerd remove each
// other's pods).
type Containerd struct {
	// Dir holds everything this containerd writes, except what containerd
	// always writes elsewhere (shim sockets under /run/containerd, network
	// namespaces under /var/run/netns), which Stop cleans up.
	Dir string
	// Socket is the gRPC (and CRI) endpoint, a unix socket path.
	Socket string
	// Bridge and Subnet are the pod network: the bridge's name and the
	// IPv4 range pods get addresses from (host-local).
	Bridge string
	Subnet *net.IPNet
	proc   *process
}

// Log is containerd's output.
func (c *Containerd) Log() string { return c.proc.Log }

// Pid is containerd's process id.
func (c *Containerd) Pid() int { return c.proc.Pid() }

// Missing says which of the Debian packages a real node needs are not
// installed (containerd, runc, containernetworking-plugins,
// busybox-static), or "" when none is missing.
func Missing() string {
	var missing []string
	for pkg, path := range map[string]string{
		"containerd": "/usr/bin/containerd", "runc": "/usr/sbin/runc",
		"containernetworking-plugins": filepath.Join(CNIBinDir, "bridge"), "busybox-static": BusyboxPath,
	} {
		if _, err := os.Stat(path); err != nil {
			missing = append(missing, pkg)
		}
	}
	sort.Strings(missing)
	return strings.Join(missing, " ")
}

// Unsupported says why this machine cannot run a real node (not root, a
// missing package), or "" when it can.
func Unsupported() string {
	if os.Geteuid() != 0 {
		return "containerd and the kubelet need root"
	}
	if m := Missing(); m != "" {
		return "missing Debian packages: " + m + " (make realnode-deps installs them)"
	}
	return ""
}

// StartContainerd starts a containerd with everything under dir and waits
// until it answers; the pod sandbox image (SandboxImage) and the web image
// (WebImage) are imported before it returns.
func StartContainerd(ctx context.Context, dir string) (*Containerd, error) {
	if why := Unsupported(); why != "" {
		return nil, errors.New(why)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := &Containerd{Dir: dir, Socket: filepath.Join(dir, "containerd.sock")}
	if err := c.pickNetwork(); err != nil {
		return nil, err
	}
	for _, d := range []string{"root", "state", "runc", "opt", "cni/net.d", "cni/ipam", "cni/cache"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(c.config()), 0o600); err != nil {
		return nil, err
	}
	cni, err := c.cniConfig()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "cni/net.d/10-edgesync.conflist"), cni, 0o600); err != nil {
		return nil, err
	}
	c.proc, err = startProcess(dir, "containerd", "/usr/bin/containerd", "--config", filepath.Join(dir, "config.toml"))
	if err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx); err != nil {
		c.proc.stop(5 * time.Second)
		return nil, err
	}
	images, err := Images()
	if err == nil {
		err = c.Import(ctx, images)
	}
	if err != nil {
		_ = c.Stop(context.WithoutCancel(ctx))
		return nil, err
	}
	return c, nil
}

// pickNetwork chooses a random bridge name and /24 in 10.200.0.0-10.249.255.0
// so that containerds started side by side do not share either.
func (c *Containerd) pickNetwork() error {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	n, err := rand.Int(rand.Reader, big.NewInt(50*256))
	if err != nil {
		return err
	}
	second, third := 200+int(n.Int64()/256), int(n.Int64()%256)
	c.Bridge = "esn" + hex.EncodeToString(b[:])
	_, c.Subnet, err = net.ParseCIDR(fmt.Sprintf("10.%d.%d.0/24", second, third))
	return err
}

// config is containerd's configuration. restrict_oom_score_adj is what
// lets the CRI plugin run sandboxes where the kernel refuses negative OOM
// scores even to root; every path is under Dir.
func (c *Containerd) config() string {
	d := c.Dir
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %[9]q
        SystemdCgroup = false
`, filepath.Join(d, "root"), filepath.Join(d, "state"), c.Socket, c.Socket+".ttrpc",
		filepath.Join(d, "opt"), SandboxImage, CNIBinDir, filepath.Join(d, "cni/net.d"), filepath.Join(d, "runc"))
}

// cniConfig is the pod network: a bridge with the first address of the
// subnet as the pods' gateway, addresses allocated by host-local in Dir.
func (c *Containerd) cniConfig() ([]byte, error) {
	gw := make(net.IP, 4)
	copy(gw, c.Subnet.IP.To4())
	gw[3] = 1
	return json.MarshalIndent(map[string]any{
		"cniVersion": "0.4.0",
		"name":       "edgesync-" + c.Bridge,
		"plugins": []any{map[string]any{
			"type": "bridge", "bridge": c.Bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": c.Subnet.String(), "gateway": gw.String()}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": filepath.Join(c.Dir, "cni/ipam"),
			},
		}},
	}, "", "  ")
}

// waitReady polls the socket until containerd answers its version.
func (c *Containerd) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := c.proc.exited(); err != nil {
			return err
		}
		if _, err := os.Stat(c.Socket); err == nil {
			cl, err := c.client()
			if err == nil {
				_, err = cl.Version(ctx)
				cl.Close()
				if err == nil {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd did not answer on %s: %w (log: %s)", c.Socket, ctx.Err(), c.proc.Log)
		case <-tick.C:
		}
	}
}

// client connects the containerd Go client, in the CRI's namespace.
func (c *Containerd) client() (*containerd.Client, error) {
	return containerd.New(c.Socket, containerd.WithDefaultNamespace(Namespace), containerd.WithTimeout(10*time.Second))
}

// Import imports images (name → image) with the containerd client, each
// under its final name (renaming later is not seen by the CRI plugin until
// containerd restarts), and unpacks them for the overlayfs snapshotter.
func (c *Containerd) Import(ctx context.Context, images map[string]v1.Image) error {
	refs := map[name.Reference]v1.Image{}
	for n, img := range images {
		tag, err := name.NewTag(n)
		if err != nil {
			return err
		}
		refs[tag] = img
	}
	var archive bytes.Buffer
	if err := tarball.MultiRefWrite(refs, &archive); err != nil {
		return fmt.Errorf("write image archive: %w", err)
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	defer cl.Close()
	imported, err := cl.Import(ctx, &archive)
	if err != nil {
		return fmt.Errorf("import images: %w", err)
	}
	for _, img := range imported {
		if err := containerd.NewImage(cl, img).Unpack(ctx, "overlayfs"); err != nil {
			return fmt.Errorf("unpack %s: %w", img.Name, err)
		}
	}
	return nil
}

// Container is a container containerd holds for the CRI plugin.
type Container struct {
	ID        string
	Namespace string // the pod's
	Pod       string
	PodUID    string
	Name      string // the container's name in the pod; "" for a sandbox
	Image     string
	Running   bool // its task runs
}

// Containers lists the containers (pod sandboxes included) with the
// containerd client.
func (c *Containerd) Containers(ctx context.Context) ([]Container, error) {
	cl, err := c.client()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	list, err := cl.Containers(ctx)
	if err != nil {
		return nil, err
	}
	var out []Container
	for _, ctr := range list {
		info, err := ctr.Info(ctx)
		if err != nil {
			continue // removed meanwhile
		}
		l := info.Labels
		ct := Container{ID: ctr.ID(), Namespace: l["io.kubernetes.pod.namespace"], Pod: l["io.kubernetes.pod.name"],
			PodUID: l["io.kubernetes.pod.uid"], Name: l["io.kubernetes.container.name"], Image: info.Image}
		if task, err := ctr.Task(ctx, nil); err == nil {
			if st, err := task.Status(ctx); err == nil {
				ct.Running = st.Status == "running"
			}
		}
		out = append(out, ct)
	}
	return out, nil
}

// Stop removes every pod sandbox through the CRI (which stops their
// containers, releases their IPs and network namespaces), stops containerd
// by its pid, unmounts what is left under Dir and deletes the bridge.
func (c *Containerd) Stop(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var errs []error
	if c.proc.exited() == nil {
		if err := c.removeSandboxes(ctx); err != nil {
			errs = append(errs, fmt.Errorf("remove pod sandboxes: %w", err))
		}
	}
	c.proc.stop(10 * time.Second)
	if err := unmountUnder(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if _, err := net.InterfaceByName(c.Bridge); err == nil {
		if out, err := exec.Command("ip", "link", "delete", c.Bridge).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %v: %s", c.Bridge, err, out))
		}
	}
	// What the CRI plugin leaves empty outside Dir (another containerd's
	// files keep their directories).
	for _, d := range []string{"/run/containerd", "/var/lib/cni", "/var/run/netns"} {
		removeEmptyDirs(d)
	}
	return errors.Join(errs...)
}

// removeSandboxes stops and removes every pod sandbox through the CRI.
func (c *Containerd) removeSandboxes(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := criv1.NewRuntimeServiceClient(conn)
	list, err := rt.ListPodSandbox(ctx, &criv1.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	var errs []error
	for _, sb := range list.GetItems() {
		if _, err := rt.StopPodSandbox(ctx, &criv1.StopPodSandboxRequest{PodSandboxId: sb.GetId()}); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := rt.RemovePodSandbox(ctx, &criv1.RemovePodSandboxRequest{PodSandboxId: sb.GetId()}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
