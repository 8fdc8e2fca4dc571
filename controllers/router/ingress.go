package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/util/validation"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// ForwardedHeader marks a call one replica forwarded to the replica that
// holds the node; such a call is never forwarded again.
const ForwardedHeader = "X-Edgesync-Forwarded-By"

// MessageIDHeader carries the id of the message a call became.
const MessageIDHeader = "X-Edgesync-Message-Id"

// Handler returns the REST port's handler. Calls are
//
//	<METHOD> /<node>/<namespace>/<rule path>[/<more>][?query]
//
// as in KubeEdge: the Rule of <namespace> whose rest source path is the
// longest prefix of <rule path>/<more> routes it to <node>; <more> is
// appended to the target topic (eventbus) or path (servicebus). Answers:
//
//   - eventbus: 200 {"id", "status": "delivered"} once the edge published
//     the body; 202 {"id", "status": "queued"} when the node is offline
//     (buffered here) or has not answered within DeliveryWait; 502 when
//     the edge could not publish (its broker is down);
//   - servicebus: the application's own answer; 504 when it has not
//     answered within RequestTimeout; 502 when it cannot be reached;
//   - 401 without a valid bearer token, 403 without create on
//     rules/messages of the Rule, 404 when no Rule matches, 413 for a body
//     over MaxBodyBytes, 503 (with Retry-After) when the node is not
//     connected to any replica, or its buffer is full.
func (r *Router) Handler() http.Handler { return http.HandlerFunc(r.serveHTTP) }

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (r *Router) serveHTTP(rw http.ResponseWriter, req *http.Request) {
	w := &statusWriter{ResponseWriter: rw}
	defer func() {
		if w.code == 0 {
			w.code = http.StatusOK
		}
		r.metrics.requests.WithLabelValues(strconv.Itoa(w.code)).Inc()
	}()
	fail := func(code int, format string, args ...any) {
		if code == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "5")
		}
		http.Error(w, fmt.Sprintf(format, args...), code)
	}

	token, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="edgesync router"`)
		fail(http.StatusUnauthorized, "no bearer token: send Authorization: Bearer <token> with a Kubernetes token (for example a ServiceAccount's)")
		return
	}
	who, err := r.auth.authenticate(req.Context(), token)
	switch {
	case errors.Is(err, errUnauthenticated):
		w.Header().Set("WWW-Authenticate", `Bearer realm="edgesync router", error="invalid_token"`)
		fail(http.StatusUnauthorized, "%v", err)
		return
	case err != nil:
		fail(http.StatusServiceUnavailable, "cannot authenticate now: %v", err)
		return
	}

	segs := splitPath(req.URL.Path)
	if len(segs) < 3 {
		fail(http.StatusNotFound, "no Rule for %q: calls go to /<node>/<namespace>/<path of a Rule's rest source>", req.URL.Path)
		return
	}
	node, ns := segs[0], segs[1]
	rl, more := r.ix.Load().matchRest(ns, segs[2:])
	if rl == nil {
		fail(http.StatusNotFound, "no Rule in namespace %q routes path /%s", ns, strings.Join(segs[2:], "/"))
		return
	}
	allowed, reason, err := r.auth.authorize(req.Context(), who, rl.key)
	if err != nil {
		fail(http.StatusServiceUnavailable, "cannot authorize now: %v", err)
		return
	}
	if !allowed {
		fail(http.StatusForbidden, "user %q may not create rules/%s of Rule %s (rules.kubeedge.io): grant create on rules/%s%s",
			who.user, MessagesSubresource, rl.key, MessagesSubresource, reasonSuffix(reason))
		return
	}
	if errs := validation.IsDNS1123Subdomain(node); len(errs) > 0 {
		fail(http.StatusNotFound, "%q is not a node name: %s", node, strings.Join(errs, "; "))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, r.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			fail(http.StatusRequestEntityTooLarge, "the body is larger than %d bytes, the router's limit", r.cfg.MaxBodyBytes)
			return
		}
		fail(http.StatusBadRequest, "read the body: %v", err)
		return
	}

	if r.cfg.Owners != nil {
		if owner, ok := r.cfg.Owners.Owner(node); ok && owner != r.cfg.Replica {
			r.forward(w, req, owner, body)
			return
		}
	}
	switch rl.targetType {
	case TypeEventBus:
		r.serveEventBus(w, req, rl, node, joinTopic(rl.targetResource["topic"], more), body, fail)
	case TypeServiceBus:
		r.serveServiceBus(w, req, rl, node, joinTopic(rl.targetResource["path"], more), body, fail)
	default:
		fail(http.StatusNotFound, "Rule %s routes to %s, which a REST call cannot reach", rl.key, rl.targetType)
	}
}

func reasonSuffix(reason string) string {
	if reason == "" {
		return ""
	}
	return " (" + reason + ")"
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// failQueueing answers a message the node's buffer did not take (err not
// nil) and reports whether it did; offlineHint follows the error of a node
// that is offline.
func failQueueing(err error, offlineHint string, fail func(int, string, ...any)) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrOffline):
		fail(http.StatusServiceUnavailable, "%v%s", err, offlineHint)
	case errors.Is(err, ErrBufferFull):
		fail(http.StatusServiceUnavailable, "%v; try again later", err)
	default:
		fail(http.StatusInternalServerError, "%v", err)
	}
	return true
}

type answer struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

func (r *Router) serveEventBus(w http.ResponseWriter, req *http.Request, rl *rule, node, topic string, body []byte, fail func(int, string, ...any)) {
	m, err := r.deliver(rl, node, topic, body)
	if failQueueing(err, "; messages wait only for nodes that were connected, and are sent when they reconnect", fail) {
		return
	}
	id := m.d.GetId()
	w.Header().Set(MessageIDHeader, id)
	timer := time.NewTimer(r.cfg.DeliveryWait)
	defer timer.Stop()
	select {
	case o := <-m.done:
		switch {
		case o.err != nil:
			fail(http.StatusServiceUnavailable, "message %s not delivered: %v", id, o.err)
		case o.res.GetError() != "":
			fail(http.StatusBadGateway, "node %q could not publish message %s on %q: %s", node, id, topic, o.res.GetError())
		default:
			writeJSON(w, http.StatusOK, answer{ID: id, Status: "delivered"})
		}
	case <-timer.C:
		writeJSON(w, http.StatusAccepted, answer{ID: id, Status: "queued"})
	case <-req.Context().Done():
	}
}

// dropHeaders are not passed to edge applications: the connection's own,
// and the caller's credentials.
var dropHeaders = map[string]bool{
	"Authorization": true, "Connection": true, "Keep-Alive": true, "Proxy-Authorization": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "Content-Length": true, ForwardedHeader: true,
}

func (r *Router) serveServiceBus(w http.ResponseWriter, req *http.Request, rl *rule, node, path string, body []byte, fail func(int, string, ...any)) {
	if req.URL.RawQuery != "" {
		path += "?" + req.URL.RawQuery
	}
	d := &edgesyncv1.RouteDelivery{Port: rl.servicePort, Method: req.Method, Path: path, Body: body}
	for name, values := range req.Header {
		if !dropHeaders[name] {
			d.Headers = append(d.Headers, &edgesyncv1.RouteHeader{Name: name, Values: values})
		}
	}
	m, err := r.request(rl, node, d)
	if failQueueing(err, "", fail) {
		return
	}
	id := m.d.GetId()
	w.Header().Set(MessageIDHeader, id)
	timer := time.NewTimer(r.cfg.RequestTimeout)
	defer timer.Stop()
	select {
	case o := <-m.done:
		switch {
		case o.err != nil:
			r.count(rl.key, false, fmt.Sprintf("request %s to node %s: %v", id, node, o.err))
			fail(http.StatusServiceUnavailable, "request %s not answered: %v", id, o.err)
		case o.res.GetError() != "":
			fail(http.StatusBadGateway, "node %q could not reach its application on port %d: %s", node, rl.servicePort, o.res.GetError())
		default:
			for _, h := range o.res.GetHeaders() {
				if !dropHeaders[http.CanonicalHeaderKey(h.GetName())] {
					w.Header()[http.CanonicalHeaderKey(h.GetName())] = h.GetValues()
				}
			}
			code := int(o.res.GetStatusCode())
			if code < 100 || code > 999 {
				code = http.StatusBadGateway
			}
			w.WriteHeader(code)
			_, _ = w.Write(o.res.GetBody())
		}
	case <-timer.C:
		r.forgetRequest(node, id)
		r.metrics.downward.WithLabelValues("timeout").Inc()
		r.count(rl.key, false, fmt.Sprintf("request %s to node %s: no answer within %s", id, node, r.cfg.RequestTimeout))
		fail(http.StatusGatewayTimeout, "the application on node %q (port %d) did not answer within %s", node, rl.servicePort, r.cfg.RequestTimeout)
	case <-req.Context().Done():
		r.forgetRequest(node, id)
	}
}

// forward sends the call to the replica holding node, which
// authenticates and authorizes it again, and copies its answer back.
func (r *Router) forward(w http.ResponseWriter, req *http.Request, owner string, body []byte) {
	fail := func(format string, args ...any) {
		w.Header().Set("Retry-After", "5")
		http.Error(w, fmt.Sprintf(format, args...), http.StatusServiceUnavailable)
	}
	if by := req.Header.Get(ForwardedHeader); by != "" {
		fail("node is held by server %s by this server's records, and by this server by %s's; try again shortly", owner, by)
		return
	}
	addr, ok := r.cfg.Owners.RouterAddress(owner)
	if !ok || r.peers == nil {
		fail("node is held by server %s, whose REST address is unknown; call it directly", owner)
		return
	}
	out, err := http.NewRequestWithContext(req.Context(), req.Method, "https://"+addr+req.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		fail("forward to server %s: %v", owner, err)
		return
	}
	out.Header = req.Header.Clone()
	out.Header.Set(ForwardedHeader, r.cfg.Replica)
	resp, err := r.peers.Do(out)
	if err != nil {
		r.log.Info("could not forward a call", zap.String("to", owner), zap.String("address", addr), zap.Error(err))
		fail("forward to server %s: %v", owner, err)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}
