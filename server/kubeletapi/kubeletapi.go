// Package kubeletapi is the kubelet endpoint of edge nodes: the HTTPS
// server the kube-apiserver calls for kubectl logs, exec, attach,
// port-forward (and /run), at the address and port edgesync writes into
// each edge Node's status. It serves the kubelet paths that name a pod
// (/containerLogs, /exec, /attach, /portForward, /run), finds the pod's
// node, and carries the request to that node through a tunnel (package
// server/tunnel), unchanged: upgrades to SPDY or WebSocket pass through.
//
// As a kubelet does, it authenticates the caller by its client
// certificate, which must chain to the configured CA (the apiserver's
// --kubelet-client-certificate), and authorizes it with a
// SubjectAccessReview of the verb on nodes/proxy for the node; anybody else
// gets 401 or 403. It authorizes before it reads: a caller allowed
// nodes/proxy on every node (the apiserver) is checked before the pod is
// read, and any other caller gets the same 403, naming no node, whether
// the pod exists, runs on a node it may not proxy to, or does not exist.
// Paths must be canonical (no ".", "..", empty or escaped segments): what
// is authorized is what is forwarded.
package kubeletapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strings"

	"go.uber.org/zap"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
)

// Dialer opens a connection to a node's edge agent, which serves it as one
// HTTP connection (tunnel.Broker).
type Dialer interface {
	Dial(ctx context.Context, node string) (net.Conn, error)
}

// Options configure a Handler.
type Options struct {
	// Client reads pods and creates SubjectAccessReviews.
	Client kubernetes.Interface
	// Dialer reaches the nodes.
	Dialer Dialer
	// ServerID names this replica in error messages.
	ServerID string
	// Logger receives the handler's logs. Default: none.
	Logger *zap.Logger
}

// Handler serves the kubelet API of every edge node held by this replica.
// Serve it over TLS with client certificates verified against the
// apiserver's kubelet client CA (tls.VerifyClientCertIfGiven, so that a
// caller without one gets a 401 that says why).
type Handler struct {
	opts  Options
	log   *zap.Logger
	proxy *httputil.ReverseProxy
}

type nodeKey struct{}

// paths are the kubelet paths served, each followed by
// /{namespace}/{pod}/...
var paths = map[string]bool{"containerLogs": true, "exec": true, "attach": true, "portForward": true, "run": true}

// New returns a handler.
func New(opts Options) (*Handler, error) {
	if opts.Client == nil || opts.Dialer == nil {
		return nil, errors.New("kubeletapi: Client and Dialer are required")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	h := &Handler{opts: opts, log: opts.Logger}
	h.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme = "http"
			r.Out.URL.Host = "kubelet"
			r.Out.Host = "kubelet"
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				node, _ := ctx.Value(nodeKey{}).(string)
				return opts.Dialer.Dial(ctx, node)
			},
			// A tunnel carries one request: its node is the pod's.
			DisableKeepAlives:  true,
			DisableCompression: true,
		},
		FlushInterval: -1, // logs -f: every write reaches the apiserver at once
		ErrorHandler:  h.proxyError,
		ErrorLog:      zap.NewStdLog(h.log.WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
	}
	return h, nil
}

// ServeHTTP authenticates, checks the path, authorizes, finds the pod's
// node and forwards.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		writeError(w, r, "Unauthorized: the kubelet API of edge nodes needs a client certificate signed by the kube-apiserver's kubelet client CA", http.StatusUnauthorized)
		return
	}
	cert := r.TLS.VerifiedChains[0][0]
	user, groups := cert.Subject.CommonName, cert.Subject.Organization

	if !canonical(r.URL) {
		writeError(w, r, fmt.Sprintf("path %q is not canonical (no empty, \".\", \"..\" or escaped segments): what is authorized must be what is forwarded", r.URL.EscapedPath()), http.StatusBadRequest)
		return
	}
	if subresources, ok := nodeSubresources(r.URL.Path); ok {
		h.serveNodePath(w, r, user, groups, subresources)
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if len(parts) < 3 || !paths[parts[0]] || parts[1] == "" || parts[2] == "" {
		writeError(w, r, fmt.Sprintf("edgesync serves only the kubelet paths that name a pod (/containerLogs, /exec, /attach, /portForward, /run) and /stats, /metrics, /pods and /healthz through the node proxy; not %q", r.URL.Path), http.StatusNotFound)
		return
	}
	ns, name := parts[1], parts[2]
	ctx := r.Context()
	verb := verbOf(r.Method)
	denied := func() {
		writeError(w, r, (&deniedError{user: user, verb: verb}).Error(), http.StatusForbidden)
	}
	failed := func(err error) {
		h.log.Warn("authorize kubelet API request", zap.String("user", user), zap.Error(err))
		writeError(w, r, fmt.Sprintf("edgesync server %s cannot authorize the request: %v", h.opts.ServerID, err), http.StatusInternalServerError)
	}
	// Authorize first: a caller that may proxy to every node (the
	// apiserver) may learn anything about the pod.
	everywhere, err := h.allowed(ctx, user, groups, verb, "")
	if err != nil {
		failed(err)
		return
	}
	pod, err := h.opts.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case err != nil && !apierrors.IsNotFound(err):
		h.log.Warn("read pod", zap.String("namespace", ns), zap.String("pod", name), zap.Error(err))
		writeError(w, r, fmt.Sprintf("edgesync server %s cannot read pod %s/%s", h.opts.ServerID, ns, name), http.StatusInternalServerError)
		return
	case !everywhere && (err != nil || pod.Spec.NodeName == ""):
		denied() // the same answer as for a pod on a node it may not reach
		return
	case err != nil:
		writeError(w, r, fmt.Sprintf("pod %s/%s not found", ns, name), http.StatusNotFound)
		return
	case pod.Spec.NodeName == "":
		writeError(w, r, fmt.Sprintf("pod %s/%s is not bound to a node", ns, name), http.StatusBadRequest)
		return
	}
	node := pod.Spec.NodeName
	if !everywhere {
		ok, err := h.allowed(ctx, user, groups, verb, node)
		switch {
		case err != nil:
			failed(err)
			return
		case !ok:
			denied()
			return
		}
	}
	h.log.Debug("kubelet API request", zap.String("node", node), zap.String("path", r.URL.Path), zap.String("user", user))
	h.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, nodeKey{}, node)))
}

// deniedError is the refusal of a caller the SubjectAccessReviews did not
// allow. It names neither the node nor the apiserver's reason, which could
// tell whether and where a pod runs.
type deniedError struct {
	user, verb string
}

func (e *deniedError) Error() string {
	return fmt.Sprintf("Forbidden (user=%s, verb=%s, resource=nodes, subresource=proxy)", e.user, e.verb)
}

// canonical reports whether u's path is what path.Clean makes of it, with
// no empty segment and nothing escaped.
func canonical(u *url.URL) bool {
	p := u.Path
	trimmed := strings.TrimSuffix(p, "/") // one trailing slash is fine
	if trimmed == "" {
		trimmed = "/"
	}
	return strings.HasPrefix(p, "/") && path.Clean(trimmed) == trimmed && (u.RawPath == "" || u.RawPath == p) &&
		!strings.ContainsAny(p, "%\\")
}

// allowed asks the apiserver whether user may verb nodes/proxy of node
// (every node when node is empty), as a kubelet does for these paths.
func (h *Handler) allowed(ctx context.Context, user string, groups []string, verb, node string) (bool, error) {
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   user,
		Groups: groups,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: verb, Resource: "nodes", Subresource: "proxy", Name: node,
		},
	}}
	res, err := h.opts.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("create SubjectAccessReview: %w", err)
	}
	return res.Status.Allowed, nil
}

// verbOf maps an HTTP method to the authorization verb, as the kubelet does.
func verbOf(method string) string {
	switch method {
	case http.MethodPost:
		return "create"
	case http.MethodPut:
		return "update"
	case http.MethodPatch:
		return "patch"
	case http.MethodDelete:
		return "delete"
	}
	return "get"
}

// proxyError answers a request the node could not be reached for. The
// status is 500 so that the apiserver passes the message on to kubectl
// (it replaces the text of a 502 or 503 with its own).
func (h *Handler) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	node, _ := r.Context().Value(nodeKey{}).(string)
	if r.Context().Err() != nil {
		return // the caller went away
	}
	h.log.Info("cannot reach edge node", zap.String("node", node), zap.Error(err))
	writeError(w, r, fmt.Sprintf("edgesync cannot reach edge node %q: %v", node, unwrapURL(err)), http.StatusInternalServerError)

}

// unwrapURL drops the transport's "dial tcp kubelet" wrapping.
func unwrapURL(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// writeError answers an error the way the caller can show it: a JSON
// metav1.Status to requests that upgrade the connection (the apiserver's
// SPDY client decodes it and kubectl exec prints its message), plain text
// otherwise (kubectl logs prints the text).
func writeError(w http.ResponseWriter, r *http.Request, msg string, code int) {
	if !httpstream.IsUpgradeRequest(r) {
		http.Error(w, msg, code)
		return
	}
	body, _ := json.Marshal(&metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Code: int32(code), Message: msg,
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
