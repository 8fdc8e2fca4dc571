package edgeclient

import (
	"slices"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"

	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
)

func secretObject(ns, name, uid, rv string) *fakeObject {
	pb := &corev1pb.Secret{}
	if err := toProto(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: k8stypes.UID("uid-" + uid), ResourceVersion: rv},
		Data:       map[string][]byte{"password": []byte("s3cret")},
	}, pb); err != nil {
		panic(err)
	}
	return &fakeObject{uid: "uid-" + uid, rv: rv, msg: &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_SecretEvent{
		SecretEvent: &edgesyncv1.SecretEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Secret: pb}}}}
}

func configMapObject(ns, name, uid, rv string) *fakeObject {
	pb := &corev1pb.ConfigMap{}
	if err := toProto(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: k8stypes.UID("uid-" + uid), ResourceVersion: rv},
		Data:       map[string]string{"greeting": "hello"},
	}, pb); err != nil {
		panic(err)
	}
	return &fakeObject{uid: "uid-" + uid, rv: rv, msg: &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_ConfigMapEvent{
		ConfigMapEvent: &edgesyncv1.ConfigMapEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, ConfigMap: pb}}}}
}

func tokenObject(ns, pod, uid, rv string) *fakeObject {
	name := pod + "/kube-api-access/token"
	return &fakeObject{uid: "uid-" + uid, rv: rv, msg: &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_TokenEvent{
		TokenEvent: &edgesyncv1.TokenEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Token: &edgesyncv1.ServiceAccountToken{
			Metadata: &metav1pb.ObjectMeta{Namespace: &ns, Name: &name, Uid: ptrTo("uid-" + uid), ResourceVersion: &rv},
			PodName:  pod, VolumeName: "kube-api-access", Path: "token", Token: "eyJ.token",
		}}}}}
}

func ptrTo[T any](v T) *T { return &v }

// revokedStatus is what the server answers a revoked node's calls with.
func revokedStatus(t *testing.T) error {
	t.Helper()
	st, err := status.New(codes.PermissionDenied, `node "edge-1" was revoked by an operator`).
		WithDetails(&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: ReasonNodeRevoked})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func heldKeys(t *testing.T, c *Client) []string {
	t.Helper()
	recs, err := c.store.List(edgesyncv1.Kind_KIND_UNSPECIFIED)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		out = append(out, r.Key.String())
	}
	return out
}

// TestRevokedNodeForgetsItsCredentials: a node refused because it was
// revoked deletes the Secrets and ServiceAccount tokens it holds, tells
// its agent, and keeps its pods and ConfigMaps; another PERMISSION_DENIED
// deletes nothing; joining again brings the credentials back.
func TestRevokedNodeForgetsItsCredentials(t *testing.T) {
	f := newFakeServer(t)
	f.set(podKey("ns", "web"), podObject("ns", "web", "1", "10", "nginx"))
	f.set(store.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: "ns", Name: "cfg"}, configMapObject("ns", "cfg", "2", "11"))
	f.set(store.Key{Kind: edgesyncv1.Kind_KIND_SECRET, Namespace: "ns", Name: "creds"}, secretObject("ns", "creds", "3", "12"))
	f.set(store.Key{Kind: edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN, Namespace: "ns", Name: "web/kube-api-access/token"}, tokenObject("ns", "web", "1", "13"))
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	waitState(t, c.Client, "the initial sync", func(s State) bool { return s.Synced && s.ObjectsHeld == 4 })
	everything := heldKeys(t, c.Client)
	c.rec.take()

	t.Run("another refusal deletes nothing", func(t *testing.T) {
		f.mu.Lock()
		f.refuseStreams = status.Error(codes.PermissionDenied, `node "edge-1" is not an edge node`)
		f.refused = 0
		f.mu.Unlock()
		f.kill()
		f.waitFor(t.Context(), "two refused streams", func() bool { return f.refused >= 2 })
		if got := heldKeys(t, c.Client); !slices.Equal(got, everything) {
			t.Errorf("the node holds %v after a PERMISSION_DENIED that is not a revocation, want %v", got, everything)
		}
		if s := c.State(); s.Revoked {
			t.Error("State.Revoked is set")
		}
	})

	t.Run("revoked", func(t *testing.T) {
		f.mu.Lock()
		f.refuseStreams = revokedStatus(t)
		f.mu.Unlock()
		waitState(t, c.Client, "the client to see the revocation", func(s State) bool { return s.Revoked })
		want := []string{"Pod ns/web", "ConfigMap ns/cfg"} // ordered by kind
		if got := heldKeys(t, c.Client); !slices.Equal(got, want) {
			t.Errorf("a revoked node holds %v, want only %v", got, want)
		}
		got := c.rec.take()
		slices.Sort(got)
		if want := []string{"DELETED ns/creds@12", "DELETED ns/web/kube-api-access/token@13"}; !slices.Equal(got, want) {
			t.Errorf("the agent was told %v, want %v", got, want)
		}
		if !IsRevoked(revokedStatus(t)) || IsRevoked(status.Error(codes.PermissionDenied, "x")) {
			t.Error("IsRevoked does not tell a revocation from another PERMISSION_DENIED")
		}
	})

	t.Run("joined again", func(t *testing.T) {
		f.mu.Lock()
		f.refuseStreams = nil
		f.mu.Unlock()
		s := waitState(t, c.Client, "the next sync", func(s State) bool { return s.Synced && s.ObjectsHeld == 4 })
		if s.Revoked {
			t.Error("State.Revoked still set after a welcomed stream")
		}
		if got := heldKeys(t, c.Client); !slices.Equal(got, everything) {
			t.Errorf("after joining again the node holds %v, want %v", got, everything)
		}
	})
}
