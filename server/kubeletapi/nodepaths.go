package kubeletapi

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"

	"go.uber.org/zap"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The kubelet paths about a node as a whole, which name no pod: /stats
// (/stats/summary), /metrics (/metrics/cadvisor, /metrics/resource,
// /metrics/probes), /pods and /healthz. The kube-apiserver calls them for
// its node proxy (kubectl get --raw /api/v1/nodes/NODE/proxy/stats/summary,
// Prometheus or metrics-server scraping through the apiserver). Every edge
// node advertises this replica's address, so the node is read from the
// X-Forwarded-Uri header the apiserver's node proxy sets
// (/api/v1/nodes/NODE/proxy/PATH), and the rest of that header must be the
// request's path. A scraper calling the endpoint directly names no node and
// is told to go through the apiserver.

// nodeSubresources are the nodes subresources a kubelet of the devcluster's
// version authorizes a node path with: the request is allowed when any one
// of them is (fine-grained first, then proxy, as the kubelet does).
func nodeSubresources(p string) ([]string, bool) {
	if path.Clean(p) != p {
		return nil, false // answered as an unknown path
	}
	first, _, _ := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	switch first {
	case "stats":
		return []string{"stats"}, true
	case "metrics":
		return []string{"metrics"}, true
	case "pods":
		return []string{"pods", "proxy"}, true
	case "healthz":
		return []string{"healthz", "proxy"}, true
	}
	return nil, false
}

// proxiedNode returns the node an apiserver node-proxy request is for,
// from its X-Forwarded-Uri, checking that the rest of that URI is path.
func proxiedNode(forwarded, path string) (string, error) {
	if forwarded == "" {
		return "", fmt.Errorf("edgesync serves %s of edge nodes only through the kube-apiserver's node proxy (/api/v1/nodes/NODE/proxy%s): every edge node has this address, so a direct request names no node", path, path)
	}
	u, err := url.Parse(forwarded)
	if err != nil {
		return "", fmt.Errorf("X-Forwarded-Uri %q: %v", forwarded, err)
	}
	rest, ok := strings.CutPrefix(u.EscapedPath(), "/api/v1/nodes/")
	if !ok {
		return "", fmt.Errorf("X-Forwarded-Uri %q is not a node proxy path (/api/v1/nodes/NODE/proxy/...)", forwarded)
	}
	id, sub, _ := strings.Cut(rest, "/")
	want, ok := strings.CutPrefix(sub, "proxy")
	if !ok || (want != "" && want[0] != '/') {
		return "", fmt.Errorf("X-Forwarded-Uri %q is not a node proxy path (/api/v1/nodes/NODE/proxy/...)", forwarded)
	}
	if unescape(want) != path {
		return "", fmt.Errorf("X-Forwarded-Uri %q does not end in the requested path %q", forwarded, path)
	}
	id = unescape(id)
	// NAME, NAME:PORT or SCHEME:NAME:PORT, as the node proxy accepts.
	parts := strings.Split(id, ":")
	name := parts[0]
	if len(parts) == 3 {
		name = parts[1]
	}
	if name == "" || len(parts) > 3 {
		return "", fmt.Errorf("X-Forwarded-Uri %q names no node", forwarded)
	}
	return name, nil
}

func unescape(s string) string {
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

// serveNodePath authorizes and forwards a node path; user and groups are
// the verified caller's.
func (h *Handler) serveNodePath(w http.ResponseWriter, r *http.Request, user string, groups, subresources []string) {
	node, err := proxiedNode(r.Header.Get("X-Forwarded-Uri"), r.URL.Path)
	if err != nil {
		writeError(w, r, err.Error(), http.StatusBadRequest)
		return
	}
	ctx := r.Context()
	verb := verbOf(r.Method)
	allowed, reason, err := h.authorizeNode(ctx, user, groups, verb, node, subresources)
	if err != nil {
		h.log.Warn("authorize kubelet API request", zap.String("user", user), zap.Error(err))
		writeError(w, r, fmt.Sprintf("edgesync server %s cannot authorize the request: %v", h.opts.ServerID, err), http.StatusInternalServerError)
		return
	}
	if !allowed {
		msg := fmt.Sprintf("Forbidden (user=%s, verb=%s, resource=nodes, subresource(s)=%s, name=%s)", user, verb, strings.Join(subresources, ","), node)
		if reason != "" {
			msg += ": " + reason
		}
		writeError(w, r, msg, http.StatusForbidden)
		return
	}
	h.log.Debug("kubelet API request", zap.String("node", node), zap.String("path", r.URL.Path), zap.String("user", user))
	h.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, nodeKey{}, node)))
}

// authorizeNode asks the apiserver whether user may verb any of the nodes
// subresources of node, in order, as the kubelet does.
func (h *Handler) authorizeNode(ctx context.Context, user string, groups []string, verb, node string, subresources []string) (bool, string, error) {
	var reasons []string
	for _, sub := range subresources {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Version: "v1", Resource: "nodes", Subresource: sub, Name: node},
		}}
		res, err := h.opts.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			return false, "", fmt.Errorf("create SubjectAccessReview: %w", err)
		}
		if res.Status.Allowed {
			return true, "", nil
		}
		if res.Status.Reason != "" {
			reasons = append(reasons, res.Status.Reason)
		}
	}
	return false, strings.Join(reasons, "; "), nil
}
