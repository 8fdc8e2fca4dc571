package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/edgesync/edgesync/controllers/router"
	"github.com/edgesync/edgesync/internal/bench/certs"
	"github.com/edgesync/edgesync/internal/bench/cluster"
	"github.com/edgesync/edgesync/internal/bench/edgesim"
	"github.com/edgesync/edgesync/internal/bench/measure"
)

// routerResult is scenario 10: KubeEdge's router, rest -> eventbus. Calls
// to the REST port (bearer token, TokenReview and SubjectAccessReview
// through the devcluster) are routed by a Rule to an MQTT topic of their
// node; each simulated edge runs edgeclient with edgeclient/router, which
// publishes on a real mosquitto, and a subscriber in the benchmark notes
// when each message arrives.
type routerResult struct {
	Done  bool `json:"done"`
	Nodes int  `json:"nodes"`
	// Rate is the calls per second asked for, spread evenly over the
	// nodes; SentRate what the load generator achieved.
	Rate          float64 `json:"rate_per_second"`
	SentRate      float64 `json:"sent_per_second"`
	WindowSeconds float64 `json:"window_seconds"`
	BodyBytes     int     `json:"body_bytes"`
	Broker        string  `json:"broker"`

	Posted int            `json:"posted"`
	Codes  map[string]int `json:"answers_by_code"`
	// Received counts distinct messages at the subscriber, Duplicates
	// those it got more than once, Lost those answered 200 or 202 that
	// never arrived.
	Received   int `json:"received"`
	Duplicates int `json:"duplicates"`
	Lost       int `json:"lost"`
	// Latency is from just before the POST to the subscriber's receipt;
	// Answer from just before the POST to its answer (200: the edge
	// published it).
	Latency measure.Summary `json:"latency"`
	Answer  measure.Summary `json:"answer_latency"`
	// P99BySecond is the latency p99 of the calls made in each second of
	// the window: a stall of the machine shows as a few bad seconds.
	P99BySecond     []float64 `json:"p99_ms_by_second"`
	SecondsOverGoal int       `json:"seconds_with_p99_over_50ms"`

	// CPU over the measured window (first POST to last receipt).
	ServerCPUSeconds    float64 `json:"server_cpu_seconds"`
	ServerCPUPercent    float64 `json:"server_cpu_percent_of_one_core"`
	MicrosPerMessage    float64 `json:"server_cpu_us_per_message"`
	BenchCPUPercent     float64 `json:"bench_cpu_percent_of_one_core"`
	MosquittoCPUPercent float64 `json:"mosquitto_cpu_percent_of_one_core"`
	APIServerCPUPercent float64 `json:"apiserver_cpu_percent_of_one_core"`
	// TokenReviews and AccessReviews the server made in the window.
	TokenReviews  float64 `json:"token_reviews"`
	AccessReviews float64 `json:"subject_access_reviews"`
	LoadAvgStart  string  `json:"loadavg_start"`
	LoadAvgEnd    string  `json:"loadavg_end"`
}

const (
	routerTopic     = "edgesync-bench/router"
	routerRule      = "bench-rest-eventbus"
	routerCaller    = "bench-caller"
	routerBodyBytes = 256
	// routerInflight bounds the calls the load generator has open; when
	// it is reached the generator waits (and the achieved rate falls).
	routerInflight = 4096
)

// routerScenario runs scenario 10 with a devcluster and a mosquitto of its
// own.
func (b *bench) routerScenario(ctx context.Context, _ map[int]bool) error {
	res := &b.result.Router
	n := b.sc.RouterNodes
	names := b.names[:n]
	res.Nodes, res.Rate, res.WindowSeconds, res.BodyBytes = n, b.sc.RouterRate, b.sc.RouterWindow.Seconds(), routerBodyBytes
	res.Broker = "one mosquitto (Debian) shared by every edge, one MQTT connection per edge's router"

	// KubeEdge's Rule and RuleEndpoint CRDs, as edgesync ships them.
	crdDir := filepath.Join(b.out, "router-crds")
	if err := os.MkdirAll(crdDir, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"rules.kubeedge.io_rules.yaml", "rules.kubeedge.io_ruleendpoints.yaml"} {
		data, err := os.ReadFile(filepath.Join(b.crds, f))
		if err != nil {
			return fmt.Errorf("the router's CRDs (--crds): %w", err)
		}
		if err := os.WriteFile(filepath.Join(crdDir, f), data, 0o644); err != nil {
			return err
		}
	}
	broker, stopBroker, brokerPID, err := startMosquitto(ctx, b.mosquitto, b.out)
	if err != nil {
		return err
	}
	defer stopBroker()

	b.prog.say("router: starting devcluster with the router's CRDs")
	cl, err := cluster.StartWithCRDs(ctx, b.devcluster, filepath.Join(b.out, "router-cluster"), crdDir)
	if err != nil {
		return err
	}
	defer cl.Stop()
	if err := cl.Create(ctx, cluster.Workload{Namespace: kubeNamespace, Nodes: names, Base: "base", Fanout: "fanout"}); err != nil {
		return err
	}
	token, err := routerSetup(ctx, cl)
	if err != nil {
		return err
	}

	srv, err := startChild(ctx, filepath.Join(b.out, "server-router.log"),
		"--kind", "edgesync", "--certs", b.certs.Dir, "--addr", "127.0.0.1:0",
		"--heartbeat", heartbeatInterval.String(), "--kubeconfig", cl.Kubeconfig,
		"--kube-qps", strconv.FormatFloat(b.kubeQPS, 'f', -1, 64), "--kube-burst", strconv.Itoa(int(2*b.kubeQPS)),
		"--router-listen", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer func() { srv.stop() }()
	if srv.ready.Router == "" {
		return errors.New("the server did not announce its router address")
	}

	sub, err := newRouterSubscriber(broker)
	if err != nil {
		return err
	}
	defer sub.close()

	fleet, err := edgesim.New(edgesim.Config{
		Addr: srv.ready.GRPC, Roots: b.certs.CA.Pool(), Heartbeats: true, ConnectConcurrency: connectConcurrency(),
		Edgeclient: &edgesim.EdgeclientConfig{CAFile: b.certs.Path(certs.CACert), CertDir: filepath.Join(b.out, "certs", "nodes"), MQTTBroker: broker},
	}, names, b.nodes[:n])
	if err != nil {
		return err
	}
	fctx, cancelFleet := context.WithCancel(ctx)
	fleetDone := make(chan struct{})
	go func() { fleet.Run(fctx); close(fleetDone) }()
	defer func() { cancelFleet(); <-fleetDone; fleet.Close() }()
	b.prog.watch("router edges", fleet, n)
	if err := waitSynced(ctx, fleet, n); err != nil {
		return err
	}

	caller := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: b.certs.CA.Pool(), MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64,
	}, Timeout: time.Minute}
	defer caller.CloseIdleConnections()
	base := "https://" + srv.ready.Router + "/"
	post := func(ctx context.Context, node string, body []byte) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+node+"/"+kubeNamespace+"/bench", bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := caller.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	// Warm up: one message to every node, until each is delivered (its
	// session claimed, its router connected to the broker, the caller's
	// token and access reviewed and cached).
	b.prog.say("router: warming up %d nodes", n)
	for _, node := range names {
		if err := waitFor(ctx, time.Minute, "a first message delivered to "+node, func() bool {
			code, err := post(ctx, node, []byte("warm-up"))
			return err == nil && code == http.StatusOK
		}); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, 30*time.Second, "the warm-up messages at the subscriber", func() bool { return sub.warm.Load() >= int64(n) }); err != nil {
		return err
	}

	total := int(b.sc.RouterRate * b.sc.RouterWindow.Seconds())
	sub.expect(total)
	sent := make([]time.Time, total)
	answered := make([]time.Duration, total)
	codes := make([]int, total)
	m0, err := srv.metrics(ctx)
	if err != nil {
		return err
	}
	cpu0, _ := srv.proc()
	self0, api0 := selfCPU(), apiserverCPU(cl)
	mq0, _ := measure.ReadProc(brokerPID)
	res.LoadAvgStart = loadAvg()
	profDone := make(chan error, 1)
	go func() {
		profDone <- srv.profile(ctx, "profile", int(min(10*time.Second, b.sc.RouterWindow)/time.Second), filepath.Join(b.out, "router-cpu.pprof"))
	}()
	b.prog.say("router: %d calls at %.0f/s over %d nodes", total, b.sc.RouterRate, n)

	// An open loop: call i is due at start + i/rate, whatever became of
	// the calls before it.
	var wg sync.WaitGroup
	inflight := make(chan struct{}, routerInflight)
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	next := 0
	for next < total {
		select {
		case <-ctx.Done():
			tick.Stop()
			wg.Wait()
			return ctx.Err()
		case <-tick.C:
		}
		due := min(total, int(time.Since(start).Seconds()*b.sc.RouterRate)+1)
		for ; next < due; next++ {
			inflight <- struct{}{}
			i := next
			body := routerBody(i)
			wg.Go(func() {
				defer func() { <-inflight }()
				t := time.Now()
				sent[i] = t
				code, err := post(ctx, names[i%n], body)
				answered[i] = time.Since(t)
				if err != nil {
					code = -1
				}
				codes[i] = code
			})
		}
	}
	tick.Stop()
	sendSeconds := time.Since(start).Seconds()
	wg.Wait()
	accepted := 0
	res.Codes = map[string]int{}
	var answers []time.Duration
	for i, code := range codes {
		key := strconv.Itoa(code)
		if code < 0 {
			key = "error"
		}
		res.Codes[key]++
		if code == http.StatusOK || code == http.StatusAccepted {
			accepted++
		}
		if code == http.StatusOK {
			answers = append(answers, answered[i])
		}
	}
	_ = waitFor(ctx, time.Minute, "every accepted message at the subscriber", func() bool { return sub.received() >= accepted })
	end := sub.last()
	if end.IsZero() {
		end = time.Now()
	}
	window := end.Sub(start).Seconds()
	cpu1, _ := srv.proc()
	self1, api1 := selfCPU(), apiserverCPU(cl)
	mq1, _ := measure.ReadProc(brokerPID)
	res.LoadAvgEnd = loadAvg()
	m1, err := srv.metrics(ctx)
	if err != nil {
		return err
	}
	if err := <-profDone; err != nil {
		fmt.Fprintf(os.Stderr, "router CPU profile: %v\n", err)
	}

	res.Posted, res.SentRate = total, float64(total)/sendSeconds
	arrived, dups := sub.results()
	var lat []time.Duration
	bySecond := make([][]time.Duration, int(b.sc.RouterWindow/time.Second)+1)
	for i, at := range arrived {
		switch {
		case !at.IsZero():
			d := at.Sub(sent[i])
			lat = append(lat, d)
			sec := min(int(sent[i].Sub(start)/time.Second), len(bySecond)-1)
			bySecond[sec] = append(bySecond[sec], d)
		case codes[i] == http.StatusOK || codes[i] == http.StatusAccepted:
			res.Lost++
		}
	}
	res.Received, res.Duplicates = len(lat), dups
	for _, ds := range bySecond {
		if len(ds) == 0 {
			continue
		}
		p99 := measure.Summarize(ds).P99Ms
		res.P99BySecond = append(res.P99BySecond, p99)
		if p99 > 50 {
			res.SecondsOverGoal++
		}
	}
	res.Latency, res.Answer = measure.Summarize(lat), measure.Summarize(answers)
	if window > 0 {
		res.ServerCPUSeconds = cpu1.CPUSeconds - cpu0.CPUSeconds
		res.ServerCPUPercent = 100 * res.ServerCPUSeconds / window
		res.BenchCPUPercent = 100 * (self1 - self0) / window
		res.MosquittoCPUPercent = 100 * (mq1.CPUSeconds - mq0.CPUSeconds) / window
		res.APIServerCPUPercent = 100 * (api1 - api0) / window
	}
	if res.Received > 0 {
		res.MicrosPerMessage = 1e6 * res.ServerCPUSeconds / float64(res.Received)
	}
	reviews := func(m measure.Metrics, resource string) float64 {
		return m.Sum("edgesync_kube_requests_total", map[string]string{"resource": resource})
	}
	res.TokenReviews = reviews(m1, "tokenreviews") - reviews(m0, "tokenreviews")
	res.AccessReviews = reviews(m1, "subjectaccessreviews") - reviews(m0, "subjectaccessreviews")
	res.Done = true
	b.prog.say("router: %d of %d delivered, p50 %.1f ms p99 %.1f ms max %.1f ms; server %.1f µs CPU per message (%.0f %% of a core)",
		res.Received, total, res.Latency.P50Ms, res.Latency.P99Ms, res.Latency.MaxMs, res.MicrosPerMessage, res.ServerCPUPercent)
	return nil
}

// routerBody is call i's body: its number, then padding to
// routerBodyBytes.
func routerBody(i int) []byte {
	body := make([]byte, routerBodyBytes)
	for j := range body {
		body[j] = 'x'
	}
	copy(body, strconv.Itoa(i)+" ")
	return body
}

// routerSetup creates the Rule and its RuleEndpoints in kubeNamespace
// (POST /<node>/bench/bench -> topic routerTopic) and a ServiceAccount
// allowed to call it, and returns a token of that ServiceAccount.
func routerSetup(ctx context.Context, cl *cluster.Cluster) (string, error) {
	cfg, err := cl.RESTConfig()
	if err != nil {
		return "", err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	objects := []struct {
		kind string
		spec map[string]any
		name string
	}{
		{"RuleEndpoint", map[string]any{"ruleEndpointType": "rest", "properties": map[string]any{}}, "bench-rest"},
		{"RuleEndpoint", map[string]any{"ruleEndpointType": "eventbus", "properties": map[string]any{}}, "bench-eventbus"},
		{"Rule", map[string]any{
			"source": "bench-rest", "sourceResource": map[string]any{"path": "/bench"},
			"target": "bench-eventbus", "targetResource": map[string]any{"topic": routerTopic},
		}, routerRule},
	}
	for _, o := range objects {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "rules.kubeedge.io/v1", "kind": o.kind,
			"metadata": map[string]any{"name": o.name, "namespace": kubeNamespace}, "spec": o.spec,
		}}
		gvr := router.Rules
		if o.kind == "RuleEndpoint" {
			gvr = router.RuleEndpoints
		}
		if _, err := dyn.Resource(gvr).Namespace(kubeNamespace).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			return "", fmt.Errorf("create %s %s: %w", o.kind, o.name, err)
		}
	}
	c := cl.Client
	if _, err := c.CoreV1().ServiceAccounts(kubeNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: routerCaller}}, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("create the caller's ServiceAccount: %w", err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: routerCaller}, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{router.Rules.Group}, Resources: []string{"rules/" + router.MessagesSubresource},
		ResourceNames: []string{routerRule}, Verbs: []string{"create"},
	}}}
	if _, err := c.RbacV1().Roles(kubeNamespace).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("create the caller's Role: %w", err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: routerCaller},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: routerCaller},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: routerCaller, Namespace: kubeNamespace}}}
	if _, err := c.RbacV1().RoleBindings(kubeNamespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("create the caller's RoleBinding: %w", err)
	}
	expiry := int64(3600)
	tr, err := c.CoreV1().ServiceAccounts(kubeNamespace).CreateToken(ctx, routerCaller, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("a token of the caller: %w", err)
	}
	return tr.Status.Token, nil
}

// startMosquitto runs Debian's mosquitto on a free loopback port and
// returns its URL, a function that stops it, and its pid.
func startMosquitto(ctx context.Context, binary, dir string) (string, func(), int, error) {
	bin, err := exec.LookPath(binary)
	if err != nil && binary == "mosquitto" {
		bin, err = exec.LookPath("/usr/sbin/mosquitto") // Debian's, off a user's PATH
	}
	if err != nil {
		return "", nil, 0, fmt.Errorf("mosquitto (%s): %w; install Debian's mosquitto (make apt-deps)", binary, err)
	}
	port, err := freePort()
	if err != nil {
		return "", nil, 0, err
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	// The subscriber may fall behind while the machine is busy: its
	// queue in the broker is not bounded (mosquitto drops QoS 1 messages
	// beyond max_queued_messages, 1000 by default).
	if err := os.WriteFile(conf, fmt.Appendf(nil, "listener %d 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n", port), 0o644); err != nil {
		return "", nil, 0, err
	}
	logFile, err := os.Create(filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		return "", nil, 0, err
	}
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return "", nil, 0, fmt.Errorf("start mosquitto: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logFile.Close(); close(done) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitFor(ctx, 30*time.Second, "mosquitto to accept connections", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		stop()
		return "", nil, 0, err
	}
	return "tcp://" + addr, stop, cmd.Process.Pid, nil
}

// routerSubscriber is an MQTT application subscribed to routerTopic: it
// notes when each numbered message first arrives.
type routerSubscriber struct {
	c    mqtt.Client
	warm atomic.Int64

	mu      sync.Mutex // guards the fields below
	arrived []time.Time
	count   int
	dups    int
	lastAt  time.Time
}

func newRouterSubscriber(broker string) (*routerSubscriber, error) {
	s := &routerSubscriber{}
	s.c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("edgesync-bench-subscriber").SetCleanSession(true))
	if tok := s.c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect the subscriber to %s: %v", broker, tok.Error())
	}
	tok := s.c.Subscribe(routerTopic, 1, func(_ mqtt.Client, m mqtt.Message) {
		now := time.Now()
		p := m.Payload()
		sp := bytes.IndexByte(p, ' ')
		i, err := strconv.Atoi(string(p[:max(sp, 0)]))
		if sp < 0 || err != nil {
			s.warm.Add(1)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if i < 0 || i >= len(s.arrived) {
			return
		}
		if !s.arrived[i].IsZero() {
			s.dups++
			return
		}
		s.arrived[i] = now
		s.count++
		s.lastAt = now
	})
	if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		s.c.Disconnect(100)
		return nil, fmt.Errorf("subscribe to %s: %v", routerTopic, tok.Error())
	}
	return s, nil
}

// expect makes room for messages 0..n-1.
func (s *routerSubscriber) expect(n int) {
	s.mu.Lock()
	s.arrived = make([]time.Time, n)
	s.mu.Unlock()
}

func (s *routerSubscriber) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

func (s *routerSubscriber) last() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastAt
}

func (s *routerSubscriber) results() ([]time.Time, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.arrived...), s.dups
}

func (s *routerSubscriber) close() { s.c.Disconnect(250) }
