package e2e_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/controllers/ownership"
	"github.com/edgesync/edgesync/controllers/router"
	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/agent"
	"github.com/edgesync/edgesync/edgeclient/backoff"
	"github.com/edgesync/edgesync/internal/pyclient"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// routerEnv is one or more edgesync-server replicas with the router on,
// a mosquitto broker standing for the edge's, and callers' tokens.
type routerEnv struct {
	pki      string
	replicas []routerReplica
	broker   string
	ns       string
	dyn      dynamic.Interface
	client   kubernetes.Interface
	allowed  string // token of a ServiceAccount that may create rules/messages
	denied   string // token of one that may not
	https    *http.Client
}

type routerReplica struct {
	id, addr, rest string
	proc           *process
}

// startMosquitto runs Debian's mosquitto on a free port until the test
// ends (stopped by its pid) and returns its URL.
func startMosquitto(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/mosquitto"); err != nil {
			repo.Missing(t, "mosquitto", "install Debian's mosquitto (`make apt-deps`, or `make test`)")
		}
	}
	port := freePort(t)
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "listener %d 127.0.0.1\nallow_anonymous true\n", port), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, "mosquitto", nil, bin, "-c", conf)
	url := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	eventually(t, 30*time.Second, "mosquitto to accept connections", func() error {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}, p)
	return url
}

// startRouter starts n replicas (ownership on when n > 1) serving the
// router with KubeEdge's own CRDs installed.
func startRouter(t *testing.T, n int, routerYAML string) *routerEnv {
	t.Helper()
	cfg := testcluster.RESTConfig(t)
	root := repo.Root(t)
	kubectl, kubeconfig := repo.Binary(t, "kubectl"), os.Getenv(testcluster.KubeconfigEnv)
	serverBin := repo.Binary(t, "edgesync-server")
	admin := []string{"KUBECONFIG=" + kubeconfig}
	env := &routerEnv{broker: startMosquitto(t), client: testcluster.Client(t)}
	var err error
	if env.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}

	// KubeEdge's own CRDs replace edgesync's (same names and schema) for
	// this test; edgesync's are put back at the end.
	shared := filepath.Join(root, "..", "shared", "kubeedge-crds")
	if _, err := os.Stat(filepath.Join(shared, "router_v1_rule.yaml")); err != nil {
		repo.Missing(t, "KubeEdge's router CRDs", "they are in ../shared/kubeedge-crds")
	}
	run(t, admin, kubectl, "apply", "-f", filepath.Join(shared, "router_v1_rule.yaml"), "-f", filepath.Join(shared, "router_v1_ruleEndpoint.yaml"))
	t.Cleanup(func() {
		_, _ = tryRun(kubectl, "--kubeconfig", kubeconfig, "apply",
			"-f", filepath.Join(root, "deploy", "crds", "rules.kubeedge.io_rules.yaml"),
			"-f", filepath.Join(root, "deploy", "crds", "rules.kubeedge.io_ruleendpoints.yaml"))
	})
	run(t, admin, kubectl, "wait", "--for=condition=Established", "crd/rules.rules.kubeedge.io", "crd/ruleendpoints.rules.kubeedge.io")

	run(t, admin, kubectl, "apply", "-f", filepath.Join(root, "deploy", "namespace.yaml"), "-f", filepath.Join(root, "deploy", "rbac"))
	token := strings.TrimSpace(run(t, admin, kubectl, "-n", "edgesync-system", "create", "token", "edgesync-server", "--duration=1h"))
	serverKubeconfig := writeTokenKubeconfig(t, kubeconfig, token)

	env.pki = filepath.Join(t.TempDir(), "pki")
	run(t, nil, serverBin, "certs", "init", "--dir", env.pki, "--hosts", "localhost,127.0.0.1")
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(env.pki, "ca.crt"))
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("read the CA: %v", err)
	}
	env.https = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: time.Minute}

	config := "heartbeatInterval: 5s\nrouter:\n" + routerYAML
	if n > 1 {
		config += fmt.Sprintf("ownership:\n  namespace: %s\n  leaseDuration: %s\n", ownershipNamespace, replicaLeaseDuration)
	}
	configFile := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		r := routerReplica{
			id:   testcluster.UniqueName(fmt.Sprintf("router-%c", 'a'+i)),
			addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			rest: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		}
		httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		r.proc = start(t, r.id, nil, serverBin, "--config", configFile,
			"--listen", r.addr, "--http-listen", httpAddr, "--router-listen", r.rest,
			"--tls-ca", filepath.Join(env.pki, "ca.crt"), "--tls-cert", filepath.Join(env.pki, "server.crt"), "--tls-key", filepath.Join(env.pki, "server.key"),
			"--kubeconfig", serverKubeconfig, "--server-id", r.id, "--ownership-address", r.addr, "--log-format", "console")
		eventually(t, time.Minute, r.id+" to be ready", func() error { return ready(httpAddr) }, r.proc)
		env.replicas = append(env.replicas, r)
	}

	env.ns = testcluster.Namespace(t, env.client)
	env.allowed = env.callerToken(t, "caller", true)
	env.denied = env.callerToken(t, "stranger", false)
	return env
}

// callerToken makes a ServiceAccount, allowed (or not) to create
// rules/messages in the test namespace, and returns a token of it.
func (env *routerEnv) callerToken(t *testing.T, name string, allowed bool) string {
	t.Helper()
	ctx := t.Context()
	if _, err := env.client.CoreV1().ServiceAccounts(env.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if allowed {
		role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{router.Rules.Group}, Resources: []string{"rules/" + router.MessagesSubresource}, Verbs: []string{"create"},
		}}}
		if _, err := env.client.RbacV1().Roles(env.ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: env.ns}}}
		if _, err := env.client.RbacV1().RoleBindings(env.ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return strings.TrimSpace(run(t, []string{"KUBECONFIG=" + os.Getenv(testcluster.KubeconfigEnv)}, repo.Binary(t, "kubectl"),
		"-n", env.ns, "create", "token", name, "--duration=1h"))
}

// apply creates the objects of a YAML stream in the test namespace.
func (env *routerEnv) apply(t *testing.T, manifests string) {
	t.Helper()
	for _, u := range decodeObjects(t, manifests) {
		gvr := router.Rules
		if u.GetKind() == "RuleEndpoint" {
			gvr = router.RuleEndpoints
		}
		if _, err := env.dyn.Resource(gvr).Namespace(env.ns).Create(t.Context(), &u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}

// ruleStatus returns a Rule's success and failure counts.
func (env *routerEnv) ruleStatus(ctx context.Context, name string) (success, fail int64, errs []string, err error) {
	u, err := env.dyn.Resource(router.Rules).Namespace(env.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return 0, 0, nil, err
	}
	success, _, _ = unstructured.NestedInt64(u.Object, "status", "successMessages")
	fail, _, _ = unstructured.NestedInt64(u.Object, "status", "failMessages")
	errs, _, _ = unstructured.NestedStringSlice(u.Object, "status", "errors")
	return success, fail, errs, nil
}

// post calls a replica's REST port.
func (env *routerEnv) post(t *testing.T, replica int, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "https://"+env.replicas[replica].rest+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := env.https.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

// routedEdge is an edge agent with the router on, which can be stopped
// and started again.
type routedEdge struct {
	node    string
	cfg     agent.Config
	cancel  context.CancelFunc
	done    chan struct{}
	clients chan *edgeclient.Client
}

func (env *routerEnv) edge(t *testing.T, node string, replicas ...int) *routedEdge {
	t.Helper()
	kpDir := t.TempDir()
	run(t, nil, repo.Binary(t, "edgesync-server"), "certs", "node", node, "--dir", env.pki)
	certFile, keyFile := filepath.Join(env.pki, "node-"+node+".crt"), filepath.Join(env.pki, "node-"+node+".key")
	var servers []string
	for _, i := range replicas {
		servers = append(servers, env.replicas[i].addr)
	}
	e := &routedEdge{node: node, clients: make(chan *edgeclient.Client, 4)}
	e.cfg = agent.Config{
		Client: edgeclient.Config{
			Servers: servers, CAFile: filepath.Join(env.pki, "ca.crt"), CertFile: certFile, KeyFile: keyFile,
			NodeName: node, StoreDir: kpDir, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named(node),
			Backoff: backoff.Config{Initial: 200 * time.Millisecond, Max: time.Second},
		},
		MQTTBroker: env.broker,
		OnClient:   func(c *edgeclient.Client) { e.clients <- c },
	}
	t.Cleanup(func() {
		e.stop()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = env.client.CoreV1().Nodes().Delete(ctx, node, metav1.DeleteOptions{})
		_ = env.client.CoordinationV1().Leases(ownershipNamespace).Delete(ctx, ownership.RecordName(node), metav1.DeleteOptions{})
	})
	e.start(t)
	return e
}

// start runs the agent and waits until its stream is synced.
func (e *routedEdge) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel, e.done = cancel, make(chan struct{})
	go func() {
		defer close(e.done)
		if err := agent.Run(ctx, e.cfg); err != nil && ctx.Err() == nil {
			t.Errorf("agent %s: %v", e.node, err)
		}
	}()
	var c *edgeclient.Client
	select {
	case c = <-e.clients:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not start within 30s")
	}
	eventually(t, time.Minute, e.node+" to be synced", func() error {
		if !c.State().Synced {
			return fmt.Errorf("not synced: %+v", c.State())
		}
		return nil
	})
}

func (e *routedEdge) stop() {
	if e.cancel != nil {
		e.cancel()
		<-e.done
		e.cancel = nil
	}
}

// subscriber is an MQTT client of the edge's broker, as an edge
// application.
type subscriber struct {
	mu   sync.Mutex
	got  []string
	more chan struct{}
	c    mqtt.Client
}

func subscribe(t *testing.T, broker, topic string) *subscriber {
	t.Helper()
	s := &subscriber{more: make(chan struct{}, 1)}
	s.c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(testcluster.UniqueName("sub")))
	if tok := s.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to %s: %v", broker, tok.Error())
	}
	t.Cleanup(func() { s.c.Disconnect(100) })
	tok := s.c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		s.mu.Lock()
		s.got = append(s.got, string(m.Payload()))
		s.mu.Unlock()
		select {
		case s.more <- struct{}{}:
		default:
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", topic, tok.Error())
	}
	return s
}

// wait returns the messages once there are n.
func (s *subscriber) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		s.mu.Lock()
		got := append([]string(nil), s.got...)
		s.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-s.more:
		case <-deadline:
			t.Fatalf("the MQTT subscriber got %d messages, want %d: %q", len(got), n, got)
		}
	}
}

const restToEventBus = `
apiVersion: rules.kubeedge.io/v1
kind: RuleEndpoint
metadata:
  name: my-rest
spec:
  ruleEndpointType: rest
  properties: {}
---
apiVersion: rules.kubeedge.io/v1
kind: RuleEndpoint
metadata:
  name: my-eventbus
spec:
  ruleEndpointType: eventbus
  properties: {}
---
apiVersion: rules.kubeedge.io/v1
kind: Rule
metadata:
  name: rest-eventbus
spec:
  source: my-rest
  sourceResource: {"path": "/a"}
  target: my-eventbus
  targetResource: {"topic": "TOPIC"}
`

func TestRouterRestToEventBus(t *testing.T) {
	env := startRouter(t, 1, "  messageTTL: 5m\n")
	node := testcluster.UniqueName("router-edge")
	topic := testcluster.UniqueName("test")
	env.apply(t, strings.ReplaceAll(restToEventBus, "TOPIC", topic))
	edge := env.edge(t, node, 0)
	sub := subscribe(t, env.broker, topic)
	path := "/" + node + "/" + env.ns + "/a"

	if code, body := env.post(t, 0, "POST", path, "", "x"); code != http.StatusUnauthorized {
		t.Errorf("no token: %d %s, want 401", code, body)
	}
	if code, body := env.post(t, 0, "POST", path, "not-a-token", "x"); code != http.StatusUnauthorized {
		t.Errorf("a bad token: %d %s, want 401", code, body)
	}
	if code, body := env.post(t, 0, "POST", path, env.denied, "x"); code != http.StatusForbidden || !strings.Contains(body, "rules/messages") {
		t.Errorf("a token without create on rules/messages: %d %s, want 403 naming it", code, body)
	}
	if code, body := env.post(t, 0, "POST", "/"+node+"/"+env.ns+"/nowhere", env.allowed, "x"); code != http.StatusNotFound {
		t.Errorf("no rule: %d %s, want 404", code, body)
	}
	if code, body := env.post(t, 0, "POST", "/never-connected/"+env.ns+"/a", env.allowed, "x"); code != http.StatusServiceUnavailable {
		t.Errorf("a node that never connected: %d %s, want 503", code, body)
	}
	if got := sub.snapshot(); len(got) != 0 {
		t.Fatalf("refused calls reached the subscriber: %q", got)
	}

	// Delivered in order, each answered once the edge published it.
	var want []string
	for i := range 20 {
		msg := fmt.Sprintf(`{"n":%d}`, i)
		want = append(want, msg)
		code, body := env.post(t, 0, "POST", path, env.allowed, msg)
		var a struct{ ID, Status string }
		if code != http.StatusOK || json.Unmarshal([]byte(body), &a) != nil || a.Status != "delivered" || a.ID == "" {
			t.Fatalf("message %d: %d %s, want 200 delivered with an id", i, code, body)
		}
	}
	if got := sub.wait(t, 20); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the subscriber got %q, want %q in order", got, want)
	}

	// A cloud application in Python (standard library only) with its
	// ServiceAccount token: delivered in order; another ServiceAccount's
	// token is refused, naming what to grant.
	python := func(token string, bodies ...string) []string {
		t.Helper()
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := pyclient.Command(t, "router_caller.py", append([]string{"https://" + env.replicas[0].rest + path, filepath.Join(env.pki, "ca.crt"), tokenFile}, bodies...)...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("router_caller.py: %v\n%s", err, out)
		}
		return strings.Split(strings.TrimSpace(string(out)), "\n")
	}
	lines := python(env.allowed, `{"python":0}`, `{"python":1}`)
	for i, line := range lines {
		if !strings.HasPrefix(line, "200 ") || !strings.Contains(line, `"delivered"`) {
			t.Errorf("Python call %d answered %q, want 200 delivered", i, line)
		}
	}
	if got := sub.wait(t, 22)[20:]; fmt.Sprint(got) != `[{"python":0} {"python":1}]` {
		t.Fatalf("the subscriber got %q from Python, want both in order", got)
	}
	if lines := python(env.denied, `{"python":"denied"}`); len(lines) != 1 || !strings.HasPrefix(lines[0], "403 ") || !strings.Contains(lines[0], "rules/messages") {
		t.Errorf("Python with a token without create on rules/messages: %q, want 403 naming it", lines)
	}

	// Offline: accepted into the node's buffer (202), delivered in order
	// when it reconnects.
	edge.stop()
	eventually(t, time.Minute, "the server to see the edge gone", func() error {
		code, body := env.post(t, 0, "POST", path, env.allowed, `{"offline":0}`)
		if code != http.StatusAccepted || !strings.Contains(body, "queued") {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	for i := 1; i < 5; i++ {
		if code, body := env.post(t, 0, "POST", path, env.allowed, fmt.Sprintf(`{"offline":%d}`, i)); code != http.StatusAccepted {
			t.Fatalf("offline message %d: %d %s, want 202", i, code, body)
		}
	}
	edge.start(t)
	got := sub.wait(t, 27)
	for i := range 5 {
		if w := fmt.Sprintf(`{"offline":%d}`, i); got[22+i] != w {
			t.Fatalf("after reconnecting the subscriber got %q, want the offline messages in order", got[22:])
		}
	}

	eventually(t, time.Minute, "the Rule's status to count 27 deliveries", func() error {
		s, f, errs, err := env.ruleStatus(t.Context(), "rest-eventbus")
		if err == nil && (s != 27 || f != 0) {
			err = fmt.Errorf("successMessages %d, failMessages %d, errors %q", s, f, errs)
		}
		return err
	})
}

func (s *subscriber) snapshot() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

const eventBusToRest = `
apiVersion: rules.kubeedge.io/v1
kind: RuleEndpoint
metadata:
  name: my-eventbus
spec:
  ruleEndpointType: eventbus
  properties: {}
---
apiVersion: rules.kubeedge.io/v1
kind: RuleEndpoint
metadata:
  name: my-rest
spec:
  ruleEndpointType: rest
  properties: {}
---
apiVersion: rules.kubeedge.io/v1
kind: Rule
metadata:
  name: eventbus-rest
spec:
  source: my-eventbus
  sourceResource: {"topic": "up", "node_name": "NODE"}
  target: my-rest
  targetResource: {"resource": "URL"}
`

func TestRouterEventBusToRest(t *testing.T) {
	env := startRouter(t, 1, "  messageTTL: 5m\n")
	node := testcluster.UniqueName("router-up")
	var (
		mu       sync.Mutex
		received = map[string]int{}
	)
	target := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		received[string(body)]++
		mu.Unlock()
	})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = target.Serve(lis) }()
	t.Cleanup(func() { target.Close() })
	env.apply(t, strings.NewReplacer("NODE", node, "URL", "http://"+lis.Addr().String()+"/in").Replace(eventBusToRest))
	env.edge(t, node, 0)

	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(env.broker).SetClientID(testcluster.UniqueName("pub")))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { pub.Disconnect(100) })
	publish := func(body string) {
		if tok := pub.Publish(env.ns+"/up", 1, false, body); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	// The edge subscribes once the server has sent it the Rule's topic.
	probes := 0
	eventually(t, time.Minute, "the edge to send up what is published on the Rule's topic", func() error {
		probes++
		publish(fmt.Sprintf("probe-%d", probes))
		mu.Lock()
		defer mu.Unlock()
		if len(received) == 0 {
			return fmt.Errorf("nothing received")
		}
		return nil
	})
	for i := range 10 {
		publish(fmt.Sprintf("message-%d", i))
	}
	eventually(t, time.Minute, "every message to arrive", func() error {
		mu.Lock()
		defer mu.Unlock()
		for i := range 10 {
			if n := received[fmt.Sprintf("message-%d", i)]; n != 1 {
				return fmt.Errorf("message-%d received %d times (all: %v)", i, n, received)
			}
		}
		return nil
	})
	mu.Lock()
	total := 0
	for body, n := range received {
		if n != 1 {
			t.Errorf("%q received %d times, want once", body, n)
		}
		total += n
	}
	mu.Unlock()
	eventually(t, time.Minute, "the Rule's status to count every message", func() error {
		s, f, errs, err := env.ruleStatus(t.Context(), "eventbus-rest")
		if err == nil && (s != int64(total) || f != 0) {
			err = fmt.Errorf("successMessages %d, failMessages %d (want %d, 0), errors %q", s, f, total, errs)
		}
		return err
	})
}

const restToServiceBus = `
apiVersion: rules.kubeedge.io/v1
kind: RuleEndpoint
metadata:
  name: my-rest
spec:
  ruleEndpointType: rest
  properties: {}
---
apiVersion: rules.kubeedge.io/v1
kind: RuleEndpoint
metadata:
  name: my-servicebus
spec:
  ruleEndpointType: servicebus
  properties: {"service_port": "PORT"}
---
apiVersion: rules.kubeedge.io/v1
kind: Rule
metadata:
  name: rest-servicebus
spec:
  source: my-rest
  sourceResource: {"path": "/svc"}
  target: my-servicebus
  targetResource: {"path": "/hello"}
`

func TestRouterRestToServiceBus(t *testing.T) {
	env := startRouter(t, 1, "  requestTimeout: 3s\n")
	node := testcluster.UniqueName("router-svc")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hello/slow" {
			<-release
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-App", "yes")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "%s %s?%s auth=%q body=%s", r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization"), body)
	})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Serve(lis) }()
	t.Cleanup(func() { app.Close() })
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	env.apply(t, strings.ReplaceAll(restToServiceBus, "PORT", port))
	env.edge(t, node, 0)

	code, body := env.post(t, 0, "PUT", "/"+node+"/"+env.ns+"/svc/x?q=1", env.allowed, "hi")
	if want := `PUT /hello/x?q=1 auth="" body=hi`; code != http.StatusCreated || body != want {
		t.Errorf("servicebus call: %d %q, want 201 %q (the application's answer, without the caller's token)", code, body, want)
	}
	code, body = env.post(t, 0, "POST", "/"+node+"/"+env.ns+"/svc/slow", env.allowed, "")
	if code != http.StatusGatewayTimeout {
		t.Errorf("a slow application: %d %s, want 504", code, body)
	}
	if code, body = env.post(t, 0, "POST", "/"+node+"/"+env.ns+"/svc/x", env.denied, ""); code != http.StatusForbidden {
		t.Errorf("without permission: %d %s, want 403", code, body)
	}
}

func TestRouterAcrossReplicas(t *testing.T) {
	env := startRouter(t, 2, "  messageTTL: 5m\n")
	node := testcluster.UniqueName("router-ha")
	topic := testcluster.UniqueName("ha")
	env.apply(t, strings.ReplaceAll(restToEventBus, "TOPIC", topic))
	env.edge(t, node, 0) // held by replica 0
	sub := subscribe(t, env.broker, topic)
	path := "/" + node + "/" + env.ns + "/a"
	eventually(t, time.Minute, "replica 1 to know replica 0 holds the node", func() error {
		code, body := env.post(t, 1, "POST", path, env.allowed, "first")
		if code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	for i := range 5 {
		if code, body := env.post(t, 1, "POST", path, env.allowed, fmt.Sprint(i)); code != http.StatusOK {
			t.Fatalf("message %d through replica 1: %d %s", i, code, body)
		}
	}
	if got := sub.wait(t, 6); fmt.Sprint(got) != "[first 0 1 2 3 4]" {
		t.Fatalf("the subscriber got %q", got)
	}
	if code, body := env.post(t, 1, "POST", path, env.denied, "x"); code != http.StatusForbidden {
		t.Errorf("a forwarded call without permission: %d %s, want 403", code, body)
	}
}
