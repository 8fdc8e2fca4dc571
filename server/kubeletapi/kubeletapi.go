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
// gets 401 or 403.
package kubeletapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
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

// ServeHTTP authenticates, finds the pod's node, authorizes and forwards.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		writeError(w, r, "Unauthorized: the kubelet API of edge nodes needs a client certificate signed by the kube-apiserver's kubelet client CA", http.StatusUnauthorized)
		return
	}
	cert := r.TLS.VerifiedChains[0][0]
	user, groups := cert.Subject.CommonName, cert.Subject.Organization

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
	pod, err := h.opts.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		writeError(w, r, fmt.Sprintf("pod %s/%s not found", ns, name), http.StatusNotFound)
		return
	case err != nil:
		h.log.Warn("read pod", zap.String("namespace", ns), zap.String("pod", name), zap.Error(err))
		writeError(w, r, fmt.Sprintf("edgesync server %s cannot read pod %s/%s: %v", h.opts.ServerID, ns, name, err), http.StatusInternalServerError)
		return
	case pod.Spec.NodeName == "":
		writeError(w, r, fmt.Sprintf("pod %s/%s is not bound to a node", ns, name), http.StatusBadRequest)
		return
	}
	node := pod.Spec.NodeName

	verb := verbOf(r.Method)
	if err := h.authorize(ctx, user, groups, verb, node); err != nil {
		var denied *deniedError
		if errors.As(err, &denied) {
			writeError(w, r, denied.Error(), http.StatusForbidden)
			return
		}
		h.log.Warn("authorize kubelet API request", zap.String("user", user), zap.Error(err))
		writeError(w, r, fmt.Sprintf("edgesync server %s cannot authorize the request: %v", h.opts.ServerID, err), http.StatusInternalServerError)
		return
	}
	h.log.Debug("kubelet API request", zap.String("node", node), zap.String("path", r.URL.Path), zap.String("user", user))
	h.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, nodeKey{}, node)))
}

// deniedError is a SubjectAccessReview's refusal.
type deniedError struct {
	user, verb, node, reason string
}

func (e *deniedError) Error() string {
	msg := fmt.Sprintf("Forbidden (user=%s, verb=%s, resource=nodes, subresource=proxy, name=%s)", e.user, e.verb, e.node)
	if e.reason != "" {
		msg += ": " + e.reason
	}
	return msg
}

// authorize asks the apiserver whether user may verb nodes/proxy of node,
// as a kubelet does for these paths.
func (h *Handler) authorize(ctx context.Context, user string, groups []string, verb, node string) error {
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   user,
		Groups: groups,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: verb, Resource: "nodes", Subresource: "proxy", Name: node,
		},
	}}
	res, err := h.opts.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create SubjectAccessReview: %w", err)
	}
	if !res.Status.Allowed {
		return &deniedError{user: user, verb: verb, node: node, reason: res.Status.Reason}
	}
	return nil
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
