package dynamicsync

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"

	"github.com/edgesync/edgesync/controllers/internal/reportqueue"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// maxWriteBody bounds the answer of one write carried back to the edge.
const maxWriteBody = 4 << 20

// writeTimeout bounds one write to the API server.
const writeTimeout = 30 * time.Second

// writer makes the writes edge applications send (ResourceWrite) with the
// application's own token: the API server authenticates and authorizes
// them as the application, never as edgesync.
type writer struct {
	base   *url.URL
	client *http.Client
	sem    chan struct{} // bounds the writes under way
}

// newWriter builds a client for the API server of cfg that carries no
// credentials of its own (only its CA is kept).
func newWriter(cfg *rest.Config) (*writer, error) {
	anon := rest.AnonymousClientConfig(cfg)
	anon.Timeout = writeTimeout
	client, err := rest.HTTPClientFor(anon)
	if err != nil {
		return nil, fmt.Errorf("dynamicsync: API client for writes: %w", err)
	}
	base, err := url.Parse(cfg.Host)
	if err != nil || base.Host == "" {
		base, err = url.Parse("https://" + cfg.Host)
		if err != nil {
			return nil, fmt.Errorf("dynamicsync: API server address %q: %w", cfg.Host, err)
		}
	}
	return &writer{base: base, client: client, sem: make(chan struct{}, 32)}, nil
}

// handleWrite checks a ResourceWrite and makes it in the background.
func (c *Controller) handleWrite(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	id := req.GetRequestId()
	w := req.GetResourceWrite()
	if c.writer == nil {
		answer(reportqueue.Result(id, feed.NewError(feed.ErrUnimplemented, "this server makes no writes for edge applications (it was built without an API server address)")))
		return
	}
	switch w.GetMethod() {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
	default:
		answer(reportqueue.Result(id, feed.Errorf(feed.ErrInvalid, "resource_write.method %q: use POST, PUT, PATCH or DELETE", w.GetMethod())))
		return
	}
	path := w.GetPath()
	if !(strings.HasPrefix(path, "/api/") || strings.HasPrefix(path, "/apis/")) || strings.Contains(path, "..") {
		answer(reportqueue.Result(id, feed.Errorf(feed.ErrInvalid, "resource_write.path %q is not a Kubernetes API path (/api/... or /apis/...)", path)))
		return
	}
	if err := c.tokenOnNode(node, w.GetToken()); err != nil {
		answer(reportqueue.Result(id, err))
		return
	}
	select {
	case c.writer.sem <- struct{}{}:
	default:
		answer(reportqueue.Result(id, feed.NewError(feed.ErrResourceExhausted, "too many writes of edge applications under way on this server; try again shortly")))
		return
	}
	go func() {
		defer func() { <-c.writer.sem }()
		res, err := c.writer.do(w)
		if err != nil {
			c.log.Info("write of an edge application failed", zap.String("node", node), zap.String("method", w.GetMethod()), zap.String("path", path), zap.Error(err))
			answer(reportqueue.Result(id, feed.Errorf(feed.ErrUnavailable, "the API server could not be reached: %v", err)))
			return
		}
		ok := feed.Result(id, nil)
		ok.WriteResult = res
		answer(ok)
	}()
}

func (w *writer) do(rw *edgesyncv1.ResourceWrite) (*edgesyncv1.ResourceWriteResult, error) {
	u := *w.base
	u.Path = strings.TrimSuffix(u.Path, "/") + rw.GetPath()
	u.RawQuery = rw.GetQuery()
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	httpReq, err := http.NewRequestWithContext(ctx, rw.GetMethod(), u.String(), bytes.NewReader(rw.GetBody()))
	if err != nil {
		return nil, err
	}
	if ct := rw.GetContentType(); ct != "" {
		httpReq.Header.Set("Content-Type", ct)
	}
	httpReq.Header.Set("Accept", "application/json")
	httpReq.Header.Set("Authorization", "Bearer "+rw.GetToken())
	resp, err := w.client.Do(httpReq)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxWriteBody))
	if err != nil {
		return nil, err
	}
	return &edgesyncv1.ResourceWriteResult{HttpStatus: int32(resp.StatusCode), ContentType: resp.Header.Get("Content-Type"), Body: body}, nil
}

// tokenOnNode checks that token is a ServiceAccount token bound to a pod
// bound to node (its claims name the pod and its uid). The claims are read
// without verifying the signature: the API server verifies it when the
// write is made with the token, so a forged token gets nothing.
func (c *Controller) tokenOnNode(node, token string) error {
	denied := feed.Errorf(feed.ErrPermissionDenied, "the write's token is not a ServiceAccount token of a pod bound to node %q", node)
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return denied
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return denied
	}
	var claims struct {
		K8s struct {
			Namespace string `json:"namespace"`
			Pod       struct {
				Name string `json:"name"`
				UID  string `json:"uid"`
			} `json:"pod"`
		} `json:"kubernetes.io"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.K8s.Pod.Name == "" {
		return denied
	}
	pods, err := c.cfg.Pods.GetIndexer().ByIndex(c.cfg.NodeIndex, node)
	if err != nil {
		return denied
	}
	for _, o := range pods {
		if p, ok := o.(*corev1.Pod); ok && p.Namespace == claims.K8s.Namespace && p.Name == claims.K8s.Pod.Name && string(p.UID) == claims.K8s.Pod.UID {
			return nil
		}
	}
	return denied
}
