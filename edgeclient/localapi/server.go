package localapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Defaults of Options.
const (
	DefaultWriteTimeout = 5 * time.Second
	DefaultTokenWait    = 5 * time.Second
)

// Options configure a Server.
type Options struct {
	// Credentials authenticate the kubelet and the local API to each
	// other (EnsureCredentials). Serve needs them; Handler does not.
	Credentials *Credentials
	// Logger receives the server's logs; nil means none.
	Logger *zap.Logger
	// WriteTimeout is how long a write waits, while the node is
	// connected, for the cloud's answer to the report it became, before
	// it is answered from the queued report instead; default
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// TokenWait is how long a TokenRequest for a pod the node holds waits
	// for the cloud to push the token; default DefaultTokenWait.
	TokenWait time.Duration
	// Authenticators identify callers that present no client
	// certificate (for example edge applications with ServiceAccount
	// tokens), tried in order. With any set, Serve accepts connections
	// without a client certificate; such callers may use only the
	// resources whose Allow admits them.
	Authenticators []Authenticator
	// Applications serves the node's pods' own programs (client-go with
	// rest.InClusterConfig): any resource, read through the node's
	// subscriptions with the ServiceAccount token the pod mounts, and
	// written through the cloud while online (apps.go). A caller with
	// another token goes on to the Authenticators, or gets 401.
	Applications bool
	// ApplicationsAddress, with Applications, is the IP:port where the
	// node's pods reach the local API. Pods using rest.InClusterConfig
	// are then told it: the Service default/kubernetes is served with it
	// as clusterIP and port (the kubelet sets KUBERNETES_SERVICE_HOST and
	// _PORT from it), and the local API's CA is appended to the ca.crt of
	// every kube-root-ca.crt ConfigMap (incluster.go). Needs Credentials.
	ApplicationsAddress string
}

// Authenticator returns the user a request authenticates as, or ok false
// when it carries no credentials this authenticator knows. An error
// refuses the request (401).
type Authenticator func(r *http.Request) (user string, ok bool, err error)

// waiter is a report on its way: edgeclient.Report.
type waiter interface {
	Wait(ctx context.Context) (*edgesyncv1.StatusResult, error)
}

// reporter is what the local API needs of its edgeclient.Client: what the
// node holds, and the reports it turns writes into. Tests replace it.
type reporter interface {
	List(kind edgesyncv1.Kind) ([]edgeclient.Object, error)
	State() edgeclient.State
	RegisterNode(edgeclient.NodeRegistration) (waiter, error)
	ReportNodeStatus(*corev1.NodeStatus) (waiter, error)
	ReportPodStatus(namespace, name, uid string, st *corev1.PodStatus) (waiter, error)
	Heartbeat() (waiter, error)
	ReportEvent(edgeclient.EventReport) error
}

// clientReporter adapts an edgeclient.Client.
type clientReporter struct{ c *edgeclient.Client }

func (r clientReporter) List(kind edgesyncv1.Kind) ([]edgeclient.Object, error) {
	return r.c.List(kind)
}
func (r clientReporter) State() edgeclient.State                     { return r.c.State() }
func (r clientReporter) ReportEvent(ev edgeclient.EventReport) error { return r.c.ReportEvent(ev) }
func (r clientReporter) RegisterNode(reg edgeclient.NodeRegistration) (waiter, error) {
	return report(r.c.RegisterNode(reg))
}
func (r clientReporter) ReportNodeStatus(st *corev1.NodeStatus) (waiter, error) {
	return report(r.c.ReportNodeStatus(st))
}
func (r clientReporter) ReportPodStatus(ns, name, uid string, st *corev1.PodStatus) (waiter, error) {
	return report(r.c.ReportPodStatus(ns, name, uid, st))
}
func (r clientReporter) Heartbeat() (waiter, error) { return report(r.c.Heartbeat()) }

func report(r *edgeclient.Report, err error) (waiter, error) {
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Server is the local API of one node. Its methods are safe for
// concurrent use.
type Server struct {
	node   string
	client reporter
	log    *zap.Logger
	opts   Options
	cache  *objectCache

	resources map[string]*Resource // by group/version/plural
	apps      appWatches           // watches of edge applications (apps.go)
	inCluster *inCluster           // what pods are told to find the local API by; nil without ApplicationsAddress

	mu sync.Mutex // guards the fields below
	// pods are the held pods as the cloud sent them, by namespace/name;
	// podStatus the status the kubelet last wrote for each, by uid, served
	// in their place (the cloud does not send status-only changes back).
	pods      map[types.NamespacedName]*corev1.Pod
	podStatus map[types.UID]*corev1.PodStatus
	// node is the node's Node as the cloud last sent it (nil before), and
	// created the one the kubelet created, served until then.
	heldNode    *corev1.Node
	createdNode *corev1.Node
	nodeStatus  *corev1.NodeStatus // the status the kubelet last wrote
	// tokens are the held ServiceAccount tokens by namespace/name;
	// tokensChanged is closed and replaced when they change.
	tokens        map[types.NamespacedName]*edgesyncv1.ServiceAccountToken
	tokensChanged chan struct{}
	// leaseUntil is when the kubelet's last Lease renewal runs out.
	leaseUntil time.Time
}

// KubeletAlive reports whether the kubelet's Lease, as it last renewed it
// here, has not run out: set edgeclient.Config.HeartbeatWhile to it, so
// that the cloud's Lease of the node lapses when the kubelet stops, as it
// would in any cluster, rather than being kept alive by the agent.
func (s *Server) KubeletAlive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Before(s.leaseUntil)
}

// New makes the local API of the node client speaks for, serving what its
// store holds. Call it before client.Run, and hand it every event of the
// client (Config.OnEvent) through OnEvent, so that it stays current.
func New(client *edgeclient.Client, opts Options) (*Server, error) {
	return newServer(client.NodeName(), clientReporter{client}, opts)
}

func newServer(node string, client reporter, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.TokenWait <= 0 {
		opts.TokenWait = DefaultTokenWait
	}
	s := &Server{
		node: node, client: client, log: opts.Logger, opts: opts, cache: newCache(time.Now()),
		resources: map[string]*Resource{},
		pods:      map[types.NamespacedName]*corev1.Pod{}, podStatus: map[types.UID]*corev1.PodStatus{},
		tokens: map[types.NamespacedName]*edgesyncv1.ServiceAccountToken{}, tokensChanged: make(chan struct{}),
	}
	for _, r := range builtinResources() {
		s.AddResource(r)
	}
	if opts.ApplicationsAddress != "" {
		if !opts.Applications {
			return nil, errors.New("localapi: Options.ApplicationsAddress needs Options.Applications")
		}
		ic, err := newInCluster(opts.ApplicationsAddress, opts.Credentials)
		if err != nil {
			return nil, err
		}
		s.inCluster = ic
		s.cache.put(objectKey{"/services", ic.service.Namespace, ic.service.Name}, ic.service, nil)
	}
	held, err := client.List(edgesyncv1.Kind_KIND_UNSPECIFIED)
	if err != nil {
		return nil, fmt.Errorf("localapi: read the store: %w", err)
	}
	for _, obj := range held {
		s.hold(obj)
	}
	return s, nil
}

// AddResource adds r to the resources served (or replaces the one of the
// same group, version and plural). Add resources before serving.
func (s *Server) AddResource(r *Resource) {
	s.resources[r.GroupVersion.String()+"/"+r.Plural] = r
}

// OnEvent brings a change to what the node holds into the local API:
// watchers see it at once. It never blocks for long and never fails;
// call it from edgeclient.Config.OnEvent.
func (s *Server) OnEvent(ev edgeclient.Event) {
	if ev.Type == edgeclient.Deleted {
		s.forget(ev.Key)
		return
	}
	s.hold(ev.Object)
}

// hold serves obj, a version of an object the node holds.
func (s *Server) hold(obj edgeclient.Object) {
	switch {
	case obj.Pod != nil:
		s.mu.Lock()
		key := types.NamespacedName{Namespace: obj.Pod.Namespace, Name: obj.Pod.Name}
		if old := s.pods[key]; old != nil && old.UID != obj.Pod.UID {
			delete(s.podStatus, old.UID) // replaced by a pod of the same name
		}
		s.pods[key] = obj.Pod
		served := s.servedPod(obj.Pod)
		s.mu.Unlock()
		s.cache.put(objectKey{"/pods", key.Namespace, key.Name}, served, nil)
	case obj.ConfigMap != nil:
		cm := obj.ConfigMap
		if s.inCluster != nil {
			cm = s.inCluster.rootCA(cm)
		}
		s.cache.put(objectKey{"/configmaps", cm.Namespace, cm.Name}, cm, nil)
	case obj.Secret != nil:
		s.cache.put(objectKey{"/secrets", obj.Secret.Namespace, obj.Secret.Name}, obj.Secret, nil)
	case obj.Service != nil:
		if s.inCluster != nil && isKubernetesService(obj.Service.Namespace, obj.Service.Name) {
			return // the synthetic one stays
		}
		s.cache.put(objectKey{"/services", obj.Service.Namespace, obj.Service.Name}, obj.Service, nil)
	case obj.Node != nil:
		if obj.Node.Name != s.node {
			return
		}
		s.mu.Lock()
		s.heldNode = obj.Node
		served := s.servedNode()
		s.mu.Unlock()
		s.cache.put(objectKey{"/nodes", "", s.node}, served, nil)
	case obj.Resource != nil:
		s.holdResource(obj.Resource)
	case obj.Subscription != nil:
		s.subscriptionChanged(obj.Subscription)
	case obj.Token != nil:
		m := obj.Token.GetMetadata()
		s.mu.Lock()
		s.tokens[types.NamespacedName{Namespace: m.GetNamespace(), Name: m.GetName()}] = obj.Token
		close(s.tokensChanged)
		s.tokensChanged = make(chan struct{})
		s.mu.Unlock()
	}
}

// forget stops serving an object the node no longer holds.
func (s *Server) forget(key edgeclient.Key) {
	switch key.Kind {
	case edgesyncv1.Kind_KIND_POD:
		s.mu.Lock()
		nn := types.NamespacedName{Namespace: key.Namespace, Name: key.Name}
		if p := s.pods[nn]; p != nil {
			delete(s.podStatus, p.UID)
		}
		delete(s.pods, nn)
		s.mu.Unlock()
		s.cache.remove(objectKey{"/pods", key.Namespace, key.Name})
	case edgesyncv1.Kind_KIND_CONFIG_MAP:
		s.cache.remove(objectKey{"/configmaps", key.Namespace, key.Name})
	case edgesyncv1.Kind_KIND_SECRET:
		s.cache.remove(objectKey{"/secrets", key.Namespace, key.Name})
	case edgesyncv1.Kind_KIND_SERVICE:
		if s.inCluster != nil && isKubernetesService(key.Namespace, key.Name) {
			return
		}
		s.cache.remove(objectKey{"/services", key.Namespace, key.Name})
	case edgesyncv1.Kind_KIND_NODE:
		s.mu.Lock()
		s.heldNode = nil
		s.createdNode = nil
		s.mu.Unlock()
		s.cache.remove(objectKey{"/nodes", "", s.node})
	case edgesyncv1.Kind_KIND_RESOURCE:
		s.forgetResource(key)
	case edgesyncv1.Kind_KIND_SUBSCRIPTION:
		s.apps.setState(key.Name, nil)
	case edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN:
		s.mu.Lock()
		delete(s.tokens, types.NamespacedName{Namespace: key.Namespace, Name: key.Name})
		s.mu.Unlock()
	}
}

// servedPod is pod with the status the kubelet last wrote for it. Called
// with s.mu held; the result is the cache's.
func (s *Server) servedPod(pod *corev1.Pod) *corev1.Pod {
	out := pod.DeepCopy()
	if st := s.podStatus[pod.UID]; st != nil {
		out.Status = *st.DeepCopy()
	}
	return out
}

// servedNode is the node's Node: as the cloud sent it (or as the kubelet
// created it, until then) with the status the kubelet last wrote. nil
// when there is neither. Called with s.mu held.
func (s *Server) servedNode() *corev1.Node {
	base := s.heldNode
	if base == nil {
		base = s.createdNode
	}
	if base == nil {
		return nil
	}
	out := base.DeepCopy()
	if s.nodeStatus != nil {
		out.Status = *s.nodeStatus.DeepCopy()
	}
	return out
}

// Handler is the local API as an http.Handler. Requests must come over
// TLS with a client certificate that the server's TLS configuration
// verified (Serve does this); the handler checks whose it is.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Serve serves the local API on ln over TLS with client certificates
// (Options.Credentials) until ctx ends, then stops it: watches end, and
// requests under way get a few seconds to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.opts.Credentials == nil {
		return errors.New("localapi: Serve needs Options.Credentials")
	}
	tlsCfg, err := s.opts.Credentials.ServerTLS()
	if err != nil {
		return err
	}
	if len(s.opts.Authenticators) > 0 || s.opts.Applications {
		tlsCfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          zap.NewStdLog(s.log.Named("http")),
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-done:
		return fmt.Errorf("localapi: serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("localapi: serve: %w", err)
	}
	return nil
}

// Request is one request for a resource, as the handlers see it.
type Request struct {
	HTTP        *http.Request
	Resource    *Resource
	Verb        string // get, list, watch, create, update, patch, delete
	Namespace   string
	Name        string
	Subresource string
	// User is the authenticated caller.
	User string
}

// serveHTTP routes a request: discovery, or a resource.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	// A pod's own program, with the ServiceAccount token the node gave it
	// (apps.go); the kubelet authenticates with its certificate.
	if s.opts.Applications && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		if a, ok := s.appCaller(r); ok {
			s.serveApp(w, r, a)
			return
		}
	}
	user, ok := s.authenticate(r)
	if !ok {
		writeError(w, r, apierrors.NewUnauthorized("Unauthorized"))
		return
	}
	path := strings.TrimSuffix(r.URL.Path, "/")
	if s.serveDiscovery(w, r, path) {
		return
	}
	req, err := s.parse(r, path)
	if err != nil {
		writeError(w, r, err)
		return
	}
	req.User = user
	if user != NodeUser(s.node) {
		allow := req.Resource.Allow
		if allow == nil {
			writeError(w, r, forbidden(req, fmt.Sprintf("only node %q's kubelet may use this resource", s.node)))
			return
		}
		if err := allow(s, req); err != nil {
			writeError(w, r, err)
			return
		}
	}
	switch req.Verb {
	case "get", "list", "watch":
		s.read(w, req)
	default:
		s.write(w, req)
	}
}

// authenticate returns the caller's user name from its verified client
// certificate.
func (s *Server) authenticate(r *http.Request) (string, bool) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		return r.TLS.VerifiedChains[0][0].Subject.CommonName, true
	}
	for _, a := range s.opts.Authenticators {
		user, ok, err := a(r)
		if err != nil {
			return "", false
		}
		if ok {
			return user, true
		}
	}
	return "", false
}

// parse finds the resource, namespace, name and verb of a request path:
// /api/v1/... or /apis/GROUP/VERSION/..., then [namespaces/NS/]PLURAL[/NAME[/SUB]].
func (s *Server) parse(r *http.Request, path string) (*Request, error) {
	notFound := apierrors.NewGenericServerResponse(http.StatusNotFound, r.Method, schema.GroupResource{}, "", "", 0, false)
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	var gv schema.GroupVersion
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		gv, parts = schema.GroupVersion{Version: parts[1]}, parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		gv, parts = schema.GroupVersion{Group: parts[1], Version: parts[2]}, parts[3:]
	default:
		return nil, notFound
	}
	req := &Request{HTTP: r}
	if len(parts) >= 3 && parts[0] == "namespaces" {
		req.Namespace, parts = parts[1], parts[2:]
	}
	req.Resource = s.resources[gv.String()+"/"+parts[0]]
	if req.Resource == nil || len(parts) > 3 || (req.Namespace != "" && !req.Resource.Namespaced) {
		return nil, notFound
	}
	if len(parts) > 1 {
		req.Name = parts[1]
	}
	if len(parts) > 2 {
		req.Subresource = parts[2]
	}
	if req.Resource.Namespaced && req.Name != "" && req.Namespace == "" {
		return nil, notFound
	}
	switch r.Method {
	case http.MethodGet:
		switch {
		case req.Name != "":
			req.Verb = "get"
		case isTrue(r.URL.Query().Get("watch")):
			req.Verb = "watch"
		default:
			req.Verb = "list"
		}
	case http.MethodPost:
		req.Verb = "create"
	case http.MethodPut:
		req.Verb = "update"
	case http.MethodPatch:
		req.Verb = "patch"
	case http.MethodDelete:
		req.Verb = "delete"
		if req.Name == "" {
			req.Verb = "deletecollection"
		}
	default:
		return nil, apierrors.NewMethodNotSupported(req.Resource.GroupResource(), r.Method)
	}
	if req.Subresource != "" && req.Verb == "get" {
		return nil, notFound
	}
	return req, nil
}

func isTrue(s string) bool { return s == "true" || s == "1" }

// forbidden is the apiserver's 403 for req.
func forbidden(req *Request, why string) error {
	return apierrors.NewForbidden(req.Resource.GroupResource(), req.Name, errors.New(why))
}

// wait waits for a write's report to be answered, while the node is
// connected and for at most Options.WriteTimeout. answered is false when
// the write is answered from the queue instead: offline, or no answer in
// time (the report stays queued and is sent on reconnect).
func (s *Server) wait(ctx context.Context, w waiter) (answered bool, err error) {
	if !s.client.State().Connected {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.WriteTimeout)
	defer cancel()
	_, err = w.Wait(ctx)
	switch {
	case err == nil:
		return true, nil
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return false, nil
	case errors.Is(err, edgeclient.ErrSuperseded):
		// A newer report about the same object replaced it: the write
		// is as good as done.
		return true, nil
	}
	return true, err
}

// same reports whether two objects are semantically equal, ignoring
// their resourceVersion.
func same(a, b runtime.Object) bool {
	return equality.Semantic.DeepEqual(withoutVersion(a), withoutVersion(b))
}

func withoutVersion(o runtime.Object) runtime.Object {
	c := o.DeepCopyObject()
	setVersionString(c, "")
	return c
}
