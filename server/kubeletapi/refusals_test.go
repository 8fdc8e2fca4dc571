package kubeletapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

type noDial struct{}

func (noDial) Dial(context.Context, string) (net.Conn, error) {
	return nil, errors.New("no tunnel in this test")
}

// newTestHandler serves pod web/p on node-a. The SubjectAccessReviews
// allow "apiserver" everything and "b-only" node-b only; actions records
// the API calls in order.
func newTestHandler(t *testing.T) (*Handler, *[]string) {
	t.Helper()
	client := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "web", Name: "p"}, Spec: corev1.PodSpec{NodeName: "node-a"}})
	var actions []string
	client.PrependReactor("*", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		actions = append(actions, a.GetVerb()+" "+a.GetResource().Resource)
		return false, nil, nil
	})
	client.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		actions = append(actions, "create subjectaccessreviews")
		sar := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
		attrs := sar.Spec.ResourceAttributes
		sar.Status.Allowed = sar.Spec.User == "apiserver" || (sar.Spec.User == "b-only" && attrs.Name == "node-b")
		sar.Status.Reason = "test policy for " + attrs.Name
		return true, sar, nil
	})
	h, err := New(Options{Client: client, Dialer: noDial{}, ServerID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return h, &actions
}

func request(user, target string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "https://kubelet"+target, nil)
	if user != "" {
		r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{Subject: pkix.Name{CommonName: user}}}}}
	} else {
		r.TLS = &tls.ConnectionState{}
	}
	return r
}

func serve(h *Handler, r *http.Request) (int, string) {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	body, _ := io.ReadAll(w.Result().Body)
	return w.Code, strings.TrimSpace(string(body))
}

// Every refusal of the kubelet endpoint, and that a caller without rights
// learns nothing about pods: the same 403, naming no node, whether the pod
// exists or not.
func TestKubeletEndpointRefusals(t *testing.T) {
	t.Run("no client certificate", func(t *testing.T) {
		h, actions := newTestHandler(t)
		code, body := serve(h, request("", "/containerLogs/web/p/c"))
		if code != http.StatusUnauthorized || !strings.Contains(body, "needs a client certificate") || len(*actions) != 0 {
			t.Fatalf("got %d %q after %v; want 401 and no API call", code, body, *actions)
		}
	})
	for _, target := range []string{
		"/containerLogs/web/../kube-system/p/c",
		"/containerLogs/web/./p/c",
		"//containerLogs/web/p/c",
		"/containerLogs/web//p/c",
		"/exec/web/p%2Fx/c",
		"/portForward/web/p/..",
	} {
		t.Run("non-canonical "+target, func(t *testing.T) {
			h, actions := newTestHandler(t)
			r := request("apiserver", "/")
			u, err := url.ParseRequestURI(target) // as the HTTP server reads a request line
			if err != nil {
				t.Fatal(err)
			}
			r.URL = u
			code, body := serve(h, r)
			if code != http.StatusBadRequest || !strings.Contains(body, "not canonical") || len(*actions) != 0 {
				t.Fatalf("got %d %q after %v; want 400 and no API call", code, body, *actions)
			}
		})
	}
	t.Run("authorized before the pod is read", func(t *testing.T) {
		h, actions := newTestHandler(t)
		serve(h, request("nobody", "/containerLogs/web/p/c"))
		if len(*actions) == 0 || (*actions)[0] != "create subjectaccessreviews" {
			t.Fatalf("API calls %v; want a SubjectAccessReview first", *actions)
		}
	})
	t.Run("same 403 whether the pod exists or not", func(t *testing.T) {
		h, _ := newTestHandler(t)
		want := "Forbidden (user=nobody, verb=get, resource=nodes, subresource=proxy)"
		for _, target := range []string{"/containerLogs/web/p/c", "/containerLogs/web/missing/c", "/exec/other/p/c"} {
			code, body := serve(h, request("nobody", target))
			if code != http.StatusForbidden || body != want {
				t.Errorf("%s: got %d %q, want 403 %q", target, code, body, want)
			}
		}
		// A caller allowed another node learns no more.
		for _, target := range []string{"/containerLogs/web/p/c", "/containerLogs/web/missing/c"} {
			code, body := serve(h, request("b-only", target))
			if code != http.StatusForbidden || body != strings.ReplaceAll(want, "nobody", "b-only") || strings.Contains(body, "node-a") {
				t.Errorf("b-only %s: got %d %q, want the same 403", target, code, body)
			}
		}
	})
	t.Run("a caller allowed every node", func(t *testing.T) {
		h, _ := newTestHandler(t)
		if code, body := serve(h, request("apiserver", "/containerLogs/web/missing/c")); code != http.StatusNotFound || !strings.Contains(body, "pod web/missing not found") {
			t.Errorf("missing pod: got %d %q, want 404", code, body)
		}
		if code, body := serve(h, request("apiserver", "/containerLogs/web/p/c")); code != http.StatusInternalServerError || !strings.Contains(body, `cannot reach edge node "node-a"`) {
			t.Errorf("allowed request: got %d %q, want it forwarded to node-a", code, body)
		}
	})
}
