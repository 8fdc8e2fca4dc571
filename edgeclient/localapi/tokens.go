package localapi

import (
	"fmt"
	"net/http"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// createToken: POST serviceaccounts/NAME/token, the kubelet asking for a
// projected ServiceAccount token of a pod. It is answered with the token
// the cloud pushed for that pod and audience (the node never asks the
// cloud for tokens: the cloud requests them for the pods bound to the
// node, refreshes them and sends them down). A pod the node does not
// hold, or another ServiceAccount than the pod's, is refused (403); a
// token that has not arrived yet is waited for (Options.TokenWait), then
// answered 503, and the kubelet retries.
func createToken(s *Server, req *Request) (int, runtime.Object, error) {
	var tr authenticationv1.TokenRequest
	if err := decodeBody(req.HTTP, &tr); err != nil {
		return 0, nil, err
	}
	ref := tr.Spec.BoundObjectRef
	if ref == nil || ref.Kind != "Pod" {
		return 0, nil, forbidden(req, fmt.Sprintf("node %q may request only tokens bound to the pods it runs", s.node))
	}
	if len(tr.Spec.Audiences) > 1 {
		return 0, nil, apierrors.NewBadRequest("edgesync carries tokens of one audience each; request one audience per token")
	}
	audience := ""
	if len(tr.Spec.Audiences) == 1 {
		audience = tr.Spec.Audiences[0]
	}
	s.mu.Lock()
	pod := s.pods[types.NamespacedName{Namespace: req.Namespace, Name: ref.Name}]
	s.mu.Unlock()
	if pod == nil || (ref.UID != "" && ref.UID != pod.UID) {
		return 0, nil, forbidden(req, fmt.Sprintf("node %q does not run pod %s/%s", s.node, req.Namespace, ref.Name))
	}
	if sa := pod.Spec.ServiceAccountName; sa != req.Name && !(sa == "" && req.Name == "default") {
		return 0, nil, forbidden(req, fmt.Sprintf("pod %s/%s runs as ServiceAccount %q, not %q", pod.Namespace, pod.Name, sa, req.Name))
	}
	deadline := time.NewTimer(s.opts.TokenWait)
	defer deadline.Stop()
	for {
		tok, changed := s.token(pod, req.Name, audience)
		if tok != nil {
			return http.StatusCreated, tokenResponse(req, &tr, tok), nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return 0, nil, apierrors.NewServiceUnavailable(fmt.Sprintf(
				"no ServiceAccount token for pod %s/%s (audience %q) has reached the node yet; the cloud sends it", pod.Namespace, pod.Name, audience))
		case <-req.HTTP.Context().Done():
			return 0, nil, apierrors.NewTimeoutError("the request ended before a token arrived", 1)
		}
	}
}

// token finds the held token of pod for the ServiceAccount and audience
// that expires last, and a channel closed when the tokens change.
func (s *Server) token(pod *corev1.Pod, sa, audience string) (*edgesyncv1.ServiceAccountToken, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *edgesyncv1.ServiceAccountToken
	for key, tok := range s.tokens {
		if key.Namespace != pod.Namespace || tok.GetPodName() != pod.Name || types.UID(tok.GetMetadata().GetUid()) != pod.UID ||
			tok.GetAudience() != audience || (tok.GetServiceAccountName() != sa && tok.GetServiceAccountName() != "") {
			continue
		}
		if best == nil || tok.GetExpirationTime().AsTime().After(best.GetExpirationTime().AsTime()) {
			best = tok
		}
	}
	return best, s.tokensChanged
}

// tokenResponse is the TokenRequest answered with tok. Its
// expirationSeconds is the token's own lifetime, from which the kubelet
// tells when to ask again.
func tokenResponse(req *Request, in *authenticationv1.TokenRequest, tok *edgesyncv1.ServiceAccountToken) *authenticationv1.TokenRequest {
	out := in.DeepCopy()
	out.Namespace, out.Name = req.Namespace, req.Name
	issued := tok.GetMetadata().GetCreationTimestamp()
	exp := tok.GetExpirationTime().AsTime()
	out.CreationTimestamp = metav1.Now()
	if issued != nil && issued.GetSeconds() > 0 {
		out.CreationTimestamp = metav1.Unix(issued.GetSeconds(), int64(issued.GetNanos()))
		if life := int64(exp.Sub(out.CreationTimestamp.Time) / time.Second); life > 0 {
			out.Spec.ExpirationSeconds = &life
		}
	}
	out.Status = authenticationv1.TokenRequestStatus{Token: tok.GetToken(), ExpirationTimestamp: metav1.NewTime(exp)}
	return out
}
