package dmi_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/edgesync/edgesync/controllers/devicesync"
	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/agent"
	"github.com/edgesync/edgesync/edgeclient/dmi"
	"github.com/edgesync/edgesync/internal/cloudtest"
	"github.com/edgesync/edgesync/internal/pyclient"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

const modelYAML = `
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata:
  name: thermometer
spec:
  protocol: modbus
  properties:
    - name: temperature
      type: INT
      accessMode: ReadWrite
      minimum: "0"
      maximum: "100"
      unit: celsius
`

// deviceYAML is a KubeEdge-style Device as users write them for KubeEdge's
// Modbus mapper, with data the mapper pushes to an MQTT broker itself.
const deviceYAML = `
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata:
  name: NAME
spec:
  deviceModelRef:
    name: thermometer
  nodeName: NODE
  protocol:
    protocolName: PROTOCOL
    configData:
      slaveID: 1
      serialPort: /dev/ttyS0
  properties:
    - name: temperature
      desired:
        value: "20"
      visitors:
        protocolName: PROTOCOL
        configData:
          register: HoldingRegister
          offset: 2
      collectCycle: 1000
      reportCycle: 1000
      reportToCloud: true
      pushMethod:
        mqtt:
          address: tcp://127.0.0.1:1883
          topic: thermo/NAME
          qos: 1
          retained: false
`

// TestKubeEdgeMappers runs a mapper built from KubeEdge's own proto (Go,
// no edgesync code) and one from edgesync's generated Python client
// against edgesync-agent (--devices dmi) on the real controllers, server
// and kube-apiserver, with KubeEdge's CRDs.
func TestKubeEdgeMappers(t *testing.T) {
	kube := testcluster.Client(t)
	dyn, err := dynamic.NewForConfig(testcluster.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	root := repo.Root(t)
	shared := filepath.Join(root, "..", "shared")
	if _, err := os.Stat(filepath.Join(shared, "kubeedge-crds")); err != nil {
		repo.Missing(t, "KubeEdge's CRDs in ../shared/kubeedge-crds", "they are provided next to the repository")
	}
	// KubeEdge's CRDs, as the device tests do; edgesync's (same names,
	// compatible) again at the end.
	testcluster.InstallCRDs(t.Context(), t, dyn, filepath.Join(shared, "kubeedge-crds"))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		testcluster.InstallCRDs(ctx, t, dyn, filepath.Join(root, "deploy", "crds"))
	})
	goMapper := buildGoMapper(t, root, filepath.Join(shared, "kubeedge-dmi"))
	_ = kube

	for _, tc := range []struct {
		name    string
		command func(t *testing.T, manager, socket string) *exec.Cmd
	}{
		{"go mapper from KubeEdge's proto", func(_ *testing.T, manager, socket string) *exec.Cmd {
			return exec.Command(goMapper, "--manager", manager, "--socket", socket, "--protocol", "modbus")
		}},
		{"python mapper from edgesync's generated client", func(t *testing.T, manager, socket string) *exec.Cmd {
			return pyclient.Command(t, "dmi_mapper.py", "--manager", manager, "--socket", socket, "--protocol", "modbus")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { testMapper(t, dyn, tc.command) })
	}
}

func testMapper(t *testing.T, dyn dynamic.Interface, command func(t *testing.T, manager, socket string) *exec.Cmd) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	kube := testcluster.Client(t)
	ns := testcluster.Namespace(t, kube)
	node := cloudtest.Node(t, "dmi")
	cloud := cloudtest.StartWithDevices(t)
	link := newLink(t, cloud.Addr)

	// UNIX socket paths are short (108 bytes): t.TempDir may be too long.
	sockets, err := os.MkdirTemp("", "dmi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockets) })
	managerSocket := filepath.Join(sockets, "dmi.sock")
	mapperSocket := filepath.Join(sockets, "mapper.sock")

	certFile, keyFile := cloud.NodeCert(t, node)
	var client atomic.Pointer[edgeclient.Client]
	cfg := agent.Config{
		Client: edgeclient.Config{
			Server: link.addr(), CAFile: cloud.CAFile, CertFile: certFile, KeyFile: keyFile,
			NodeName: node, StoreDir: t.TempDir(), Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		},
		Version: "e2e", OnClient: func(c *edgeclient.Client) { client.Store(c) },
		Devices: agent.DevicesConfig{Mode: agent.DevicesDMI, DMI: dmi.Config{SocketPath: managerSocket, NoMapperGrace: 2 * time.Second}},
	}
	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(agentCtx, cfg) }()
	t.Cleanup(func() {
		stopAgent()
		if err := <-agentDone; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	waitFor(ctx, t, "the node to register", func() (bool, error) {
		_, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil, nil
	})

	models := dyn.Resource(devicesync.DeviceModels).Namespace(ns)
	devices := dyn.Resource(devicesync.Devices).Namespace(ns)
	create := func(res dynamic.ResourceInterface, text string) {
		t.Helper()
		obj := &unstructured.Unstructured{}
		if err := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(text), 4096).Decode(&obj.Object); err != nil {
			t.Fatal(err)
		}
		if _, err := res.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s: %v", obj.GetName(), err)
		}
	}
	device := func(name, nodeName, protocol string) string {
		return strings.NewReplacer("NAME", name, "NODE", nodeName, "PROTOCOL", protocol).Replace(deviceYAML)
	}
	create(models, modelYAML)
	create(devices, device("thermo-1", node, "modbus"))
	create(devices, device("valve-1", node, "opcua"))          // no mapper for it
	create(devices, device("thermo-9", "elsewhere", "modbus")) // another node's
	prefix := ns + "/"

	// The mapper registers and gets the device, in the answer or by
	// RegisterDevice, with the pushMethod as written.
	m := startMapper(t, command(t, managerSocket, mapperSocket))
	line := m.waitLine(ctx, t, "DEVICE", prefix+"thermo-1 temperature=20")
	if !strings.Contains(line, "mqtt=tcp://127.0.0.1:1883/thermo/thermo-1") {
		t.Errorf("the mapper got %q, without the device's pushMethod", line)
	}

	// A desired value changed with kubectl reaches it through UpdateDevice.
	kubectl(t, "-n", ns, "patch", "device", "thermo-1", "--type=json",
		"-p", `[{"op":"replace","path":"/spec/properties/0/desired/value","value":"25"}]`)
	m.waitLine(ctx, t, "DEVICE UpdateDevice "+prefix+"thermo-1 temperature=25")

	// What it reports becomes the DeviceStatus.
	m.report(t, ns, "thermo-1", "temperature", "23")
	m.waitLine(ctx, t, "REPORTED "+prefix+"thermo-1 temperature=23")
	waitReported(ctx, t, dyn, ns, "thermo-1", "23")

	// Refused: another node's device, a value that is not an INT.
	m.report(t, ns, "thermo-9", "temperature", "40")
	refused := m.waitLine(ctx, t, "REFUSED")
	if !codeIs(refused, "NotFound") || !strings.Contains(refused, "is not bound to node "+node) {
		t.Errorf("a report for another node's device: %q, want NotFound saying it is not bound to %s", refused, node)
	}
	m.report(t, ns, "thermo-1", "temperature", "warm")
	refused = m.waitLine(ctx, t, "REFUSED")
	if !codeIs(refused, "InvalidArgument") || !strings.Contains(refused, `reported value "warm" is not an integer`) {
		t.Errorf("a malformed value: %q, want InvalidArgument saying it is not an integer", refused)
	}

	// A device whose protocol has no mapper says so.
	waitFor(ctx, t, "valve-1's status to say there is no opcua mapper", func() (bool, error) {
		st, err := dyn.Resource(devicesync.DeviceStatuses).Namespace(ns).Get(ctx, "valve-1", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		state, _, _ := unstructured.NestedString(st.Object, "status", "state")
		return strings.Contains(state, `no mapper for protocol "opcua"`), nil
	})

	// Killed and restarted, it gets its device again.
	m.kill(t)
	m = startMapper(t, command(t, managerSocket, mapperSocket))
	m.waitLine(ctx, t, "DEVICE register-answer "+prefix+"thermo-1 temperature=25")

	// The cloud goes away: a restarted mapper still gets the desired value
	// held, and its report reaches the DeviceStatus once the cloud is back.
	link.cut()
	waitFor(ctx, t, "the agent to be disconnected", func() (bool, error) {
		c := client.Load()
		return c != nil && !c.State().Connected, nil
	})
	m.kill(t)
	m = startMapper(t, command(t, managerSocket, mapperSocket))
	m.waitLine(ctx, t, "DEVICE register-answer "+prefix+"thermo-1 temperature=25")
	m.report(t, ns, "thermo-1", "temperature", "31")
	m.waitLine(ctx, t, "REPORTED "+prefix+"thermo-1 temperature=31")
	if got := reported(ctx, dyn, ns, "thermo-1"); got != "23" {
		t.Fatalf("while the cloud is unreachable the DeviceStatus says %q", got)
	}
	link.restore()
	waitReported(ctx, t, dyn, ns, "thermo-1", "31")
}

func codeIs(line, code string) bool {
	f := strings.Fields(line)
	return len(f) > 1 && strings.EqualFold(strings.ReplaceAll(f[1], "_", ""), code)
}

// buildGoMapper builds testdata/kubeedgemapper in a module of its own, with
// Go code generated from KubeEdge's api.proto by the pinned buf and
// protoc-gen-go(-grpc), at the versions of gRPC and protobuf edgesync uses.
func buildGoMapper(t *testing.T, root, kubeedgeDMI string) string {
	t.Helper()
	buf, genGo, genGRPC := repo.Binary(t, "buf"), repo.Binary(t, "protoc-gen-go"), repo.Binary(t, "protoc-gen-go-grpc")
	if _, err := os.Stat(filepath.Join(kubeedgeDMI, "v1beta1", "api.proto")); err != nil {
		repo.Missing(t, "KubeEdge's DMI definition in ../shared/kubeedge-dmi", "it is provided next to the repository")
	}
	dir := t.TempDir()
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	gomod = []byte(strings.Replace(string(gomod), "module github.com/edgesync/edgesync", "module kubeedgemapper", 1))
	gosum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	main, err := os.ReadFile(filepath.Join("testdata", "kubeedgemapper", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	template := fmt.Sprintf(`version: v2
managed:
  enabled: true
  override:
    - file_option: go_package
      value: kubeedgemapper/dmi;v1beta1
plugins:
  - local: %s
    out: %s
    opt: module=kubeedgemapper
  - local: %s
    out: %s
    opt: module=kubeedgemapper
`, genGo, dir, genGRPC, dir)
	for name, data := range map[string][]byte{"go.mod": gomod, "go.sum": gosum, "main.go": main, "buf.gen.yaml": []byte(template)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY=off", "GOTOOLCHAIN=local")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	run(buf, "generate", kubeedgeDMI, "--template", filepath.Join(dir, "buf.gen.yaml"))
	run("go", "build", "-o", "kubeedgemapper", ".")
	return filepath.Join(dir, "kubeedgemapper")
}

// mapper is a running mapper process and the lines it printed.
type mapper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
}

func startMapper(t *testing.T, cmd *exec.Cmd) *mapper {
	t.Helper()
	m := &mapper{cmd: cmd, lines: make(chan string, 1000), done: make(chan struct{})}
	var err error
	if m.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &testWriter{t: t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(m.done)
		s := bufio.NewScanner(out)
		for s.Scan() {
			m.lines <- s.Text()
		}
		_ = cmd.Wait()
		close(m.lines)
	}()
	t.Cleanup(func() { m.kill(t) })
	return m
}

// waitLine returns the next line starting with prefix and containing
// every one of contains, skipping others.
func (m *mapper) waitLine(ctx context.Context, t *testing.T, prefix string, contains ...string) string {
	t.Helper()
	var seen []string
	for {
		select {
		case line, ok := <-m.lines:
			if !ok {
				t.Fatalf("the mapper exited before printing %s %v; it printed:\n%s", prefix, contains, strings.Join(seen, "\n"))
			}
			seen = append(seen, line)
			if !strings.HasPrefix(line, prefix) {
				continue
			}
			all := true
			for _, c := range contains {
				all = all && strings.Contains(line, c)
			}
			if all {
				t.Logf("mapper: %s", line)
				return line
			}
		case <-ctx.Done():
			t.Fatalf("the mapper did not print %s %v; it printed:\n%s", prefix, contains, strings.Join(seen, "\n"))
		}
	}
}

func (m *mapper) report(t *testing.T, ns, name, prop, value string) {
	t.Helper()
	if _, err := fmt.Fprintf(m.stdin, "report %s %s %s %s\n", ns, name, prop, value); err != nil {
		t.Fatalf("tell the mapper to report: %v", err)
	}
}

func (m *mapper) kill(t *testing.T) {
	t.Helper()
	if m.cmd.Process != nil {
		_ = m.cmd.Process.Kill()
	}
	<-m.done
}

// testWriter logs what a mapper writes to stderr.
type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Logf("mapper: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func kubectl(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(repo.Binary(t, "kubectl"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+os.Getenv(testcluster.KubeconfigEnv))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// reported returns the reported temperature in a device's DeviceStatus.
func reported(ctx context.Context, dyn dynamic.Interface, ns, name string) string {
	st, err := dyn.Resource(devicesync.DeviceStatuses).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	twins, _, _ := unstructured.NestedSlice(st.Object, "status", "twins")
	for _, tw := range twins {
		m, _ := tw.(map[string]any)
		if m["propertyName"] == "temperature" {
			v, _, _ := unstructured.NestedString(m, "reported", "value")
			return v
		}
	}
	return ""
}

func waitReported(ctx context.Context, t *testing.T, dyn dynamic.Interface, ns, name, value string) {
	t.Helper()
	waitFor(ctx, t, fmt.Sprintf("DeviceStatus %s/%s to report temperature %s", ns, name, value), func() (bool, error) {
		return reported(ctx, dyn, ns, name) == value, nil
	})
}

// waitFor polls cond: the API server and the client's state tell nobody
// when they change.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// link is a TCP proxy to the server that can be cut, as a network that
// fails between the edge and the cloud.
type link struct {
	lis    net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex // guards down and conns
	down  bool
	conns map[net.Conn]bool
}

func newLink(t *testing.T, target string) *link {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{lis: lis, target: target, conns: map[net.Conn]bool{}}
	l.wg.Add(1)
	go l.accept()
	t.Cleanup(func() {
		lis.Close()
		l.cut()
		l.wg.Wait()
	})
	return l
}

func (l *link) addr() string { return l.lis.Addr().String() }

func (l *link) accept() {
	defer l.wg.Done()
	for {
		conn, err := l.lis.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		down := l.down
		l.mu.Unlock()
		if down {
			conn.Close()
			continue
		}
		up, err := net.Dial("tcp", l.target)
		if err != nil {
			conn.Close()
			continue
		}
		l.mu.Lock()
		l.conns[conn], l.conns[up] = true, true
		l.mu.Unlock()
		l.wg.Add(2)
		go l.pipe(conn, up)
		go l.pipe(up, conn)
	}
}

func (l *link) pipe(dst, src net.Conn) {
	defer l.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// cut closes every connection and refuses new ones until restore.
func (l *link) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = true
	for c := range l.conns {
		c.Close()
	}
	l.conns = map[net.Conn]bool{}
}

func (l *link) restore() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = false
}
