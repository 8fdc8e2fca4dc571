package controllers_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/tokensync"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

// podWithAudience is a pod on node that mounts, besides the
// kube-api-access volume admission adds, a token for audience that
// expires after the shortest lifetime Kubernetes grants.
func podWithAudience(name, node, audience string) *corev1.Pod {
	pod := podUsing(name, node, "", "")
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "vault", VolumeSource: corev1.VolumeSource{
		Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
			ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: audience, ExpirationSeconds: ptr.To[int64](600), Path: "token"},
		}}},
	}})
	return pod
}

// apiAccessKey is the key of the token in pod's kube-api-access volume.
func apiAccessKey(t *testing.T, pod *corev1.Pod) feed.Key {
	t.Helper()
	for _, v := range pod.Spec.Volumes {
		if strings.HasPrefix(v.Name, "kube-api-access-") {
			return tokensync.Key(pod.Namespace, pod.Name, v.Name, "token")
		}
	}
	t.Fatalf("pod %s has no kube-api-access volume (is ServiceAccount admission on?)", pod.Name)
	return feed.Key{}
}

// reviewToken asks the API server's TokenReview about tok for audience and
// fails unless it is accepted and bound to pod.
func reviewToken(t *testing.T, client kubernetes.Interface, tok *edgesyncv1.ServiceAccountToken, audience string, pod *corev1.Pod) {
	t.Helper()
	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: tok.GetToken()}}
	if audience != "" {
		review.Spec.Audiences = []string{audience}
	}
	got, err := client.AuthenticationV1().TokenReviews().Create(t.Context(), review, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview of %s: %v", tok.GetMetadata().GetName(), err)
	}
	st := got.Status
	if !st.Authenticated {
		t.Fatalf("token %s not accepted for audience %q: %s", tok.GetMetadata().GetName(), audience, st.Error)
	}
	if audience != "" && !slices.Contains(st.Audiences, audience) {
		t.Errorf("token %s: audiences %v, want %q", tok.GetMetadata().GetName(), st.Audiences, audience)
	}
	if name := st.User.Extra["authentication.kubernetes.io/pod-name"]; !slices.Equal(name, []string{pod.Name}) {
		t.Errorf("token %s bound to pod %v, want %s", tok.GetMetadata().GetName(), name, pod.Name)
	}
	if uid := st.User.Extra["authentication.kubernetes.io/pod-uid"]; !slices.Equal(uid, []string{string(pod.UID)}) {
		t.Errorf("token %s bound to pod uid %v, want %s", tok.GetMetadata().GetName(), uid, pod.UID)
	}
	if want := "system:serviceaccount:" + pod.Namespace + ":default"; st.User.Username != want {
		t.Errorf("token %s is for %s, want %s", tok.GetMetadata().GetName(), st.User.Username, want)
	}
}

func tokenOf(msg *edgesyncv1.SyncResponse) *edgesyncv1.ServiceAccountToken {
	return msg.GetTokenEvent().GetToken()
}

func TestServiceAccountTokensReachOnlyThePodsNode(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	edge1, edge2 := edgeNode(t, client, "edge-1"), edgeNode(t, client, "edge-2")
	rec := newRecorder()
	clk := clocktesting.NewFakeClock(time.Now())
	ctrls := start(t, controllers.Config{DisableDevices: true, Clock: clk}, rec)
	// Both nodes hold a session; tokens are obtained for connected nodes.
	for _, node := range []string{edge1, edge2} {
		if _, err := ctrls.Desired(node); err != nil {
			t.Fatal(err)
		}
	}

	plain, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("plain", edge1, "", ""), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vault, err := client.CoreV1().Pods(ns).Create(t.Context(), podWithAudience("vault", edge1, "vault.example.com"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	plainKey, vaultAPIKey := apiAccessKey(t, plain), apiAccessKey(t, vault)
	vaultKey := tokensync.Key(ns, "vault", "vault", "token")
	for _, tc := range []struct {
		key      feed.Key
		pod      *corev1.Pod
		audience string
	}{
		{plainKey, plain, ""},
		{vaultAPIKey, vault, ""},
		{vaultKey, vault, "vault.example.com"},
	} {
		tok := tokenOf(rec.waitApplied(t, edge1, tc.key, nil))
		if tok.GetPodName() != tc.pod.Name || tok.GetAudience() != tc.audience || tok.GetMetadata().GetUid() != string(tc.pod.UID) {
			t.Errorf("%s: pod %q uid %q audience %q, want %q %q %q", tc.key, tok.GetPodName(), tok.GetMetadata().GetUid(), tok.GetAudience(),
				tc.pod.Name, tc.pod.UID, tc.audience)
		}
		reviewToken(t, client, tok, tc.audience, tc.pod)
	}

	// The 600s token is refreshed at 80% of its life, before it expires.
	first := tokenOf(rec.waitApplied(t, edge1, vaultKey, nil))
	expiry := first.GetExpirationTime().AsTime()
	if life := expiry.Sub(clk.Now()); life < 9*time.Minute || life > 11*time.Minute {
		t.Fatalf("custom token lives %s, want the 600s asked for", life)
	}
	clk.Step(500 * time.Second)
	refreshed := tokenOf(rec.waitApplied(t, edge1, vaultKey, func(m *edgesyncv1.SyncResponse) bool {
		return tokenOf(m).GetMetadata().GetResourceVersion() != first.GetMetadata().GetResourceVersion()
	}))
	if !clk.Now().Before(expiry) {
		t.Fatalf("refresh arrived at %s, after the old token expired at %s", clk.Now(), expiry)
	}
	if refreshed.GetToken() == first.GetToken() || refreshed.GetExpirationTime().AsTime().Before(expiry) {
		t.Errorf("refresh sent the same token, or one expiring (%s) before the old one (%s)", refreshed.GetExpirationTime().AsTime(), expiry)
	}
	reviewToken(t, client, refreshed, "vault.example.com", vault)

	// A pod replaced by one of the same name gets a token bound to the
	// new pod.
	if err := client.CoreV1().Pods(ns).Delete(t.Context(), "plain", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	rec.waitDeleted(t, edge1, plainKey)
	again, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("plain", edge1, "", ""), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	againKey := apiAccessKey(t, again)
	tok := tokenOf(rec.waitApplied(t, edge1, againKey, func(m *edgesyncv1.SyncResponse) bool {
		return tokenOf(m).GetMetadata().GetUid() == string(again.UID)
	}))
	reviewToken(t, client, tok, "", again)

	// Deleting the pod deletes its tokens at the edge.
	if err := client.CoreV1().Pods(ns).Delete(t.Context(), "vault", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	rec.waitDeleted(t, edge1, vaultKey)
	rec.waitDeleted(t, edge1, vaultAPIKey)

	for _, obj := range rec.sent(edge2) {
		if obj.Key.Kind == edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN {
			t.Errorf("edge-2 was sent %s, a token of a pod on edge-1", obj.Key)
		}
	}
	// What a reconnecting edge-1 is told it should hold: the current
	// tokens of its pods, and of no pod of another node.
	objs, err := ctrls.Desired(edge1)
	if err != nil {
		t.Fatal(err)
	}
	var held []feed.Key
	for _, obj := range objs {
		if obj.Key.Kind == edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN {
			held = append(held, obj.Key)
		}
	}
	if !slices.Equal(held, []feed.Key{againKey}) {
		t.Errorf("Desired(edge-1) tokens = %v, want only %v", held, againKey)
	}
}

func TestFailedTokenRequestIsRetriedAndCounted(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	node := edgeNode(t, client, "edge-1")
	rec := newRecorder()
	reg := prometheus.NewRegistry()
	core, logs := observer.New(zap.DebugLevel)
	ctrls := start(t, controllers.Config{DisableDevices: true, Registerer: reg, Logger: zap.New(core)}, rec)

	// A pod whose ServiceAccount is deleted after admission: its token
	// cannot be requested until the ServiceAccount exists again.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "worker"}}
	if _, err := client.CoreV1().ServiceAccounts(ns).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	spec := podUsing("job", node, "", "")
	spec.Spec.ServiceAccountName = "worker"
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), spec, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().ServiceAccounts(ns).Delete(t.Context(), "worker", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrls.Desired(node); err != nil { // the node connects
		t.Fatal(err)
	}
	eventually(t, "a failed TokenRequest to be counted", func() (bool, error) {
		return metric(t, reg, "edgesync_token_refresh_failures_total", "") >= 1, nil
	})
	if _, err := client.CoreV1().ServiceAccounts(ns).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok := tokenOf(rec.waitApplied(t, node, apiAccessKey(t, pod), nil))
	if tok.GetServiceAccountName() != "worker" || tok.GetToken() == "" {
		t.Fatalf("token for ServiceAccount %q (%d bytes), want worker's", tok.GetServiceAccountName(), len(tok.GetToken()))
	}
	if metric(t, reg, "edgesync_tokens_issued_total", "") < 1 {
		t.Error("edgesync_tokens_issued_total did not count the token")
	}
	// The failure was logged, and no log line holds the token.
	failed := false
	for _, entry := range logs.All() {
		line := entry.Message
		for _, f := range entry.Context {
			line += fmt.Sprintf(" %s=%v%s", f.Key, f.Interface, f.String)
			if err, ok := f.Interface.(error); ok {
				line += err.Error()
			}
		}
		if strings.Contains(line, tok.GetToken()) {
			t.Errorf("log line holds the token: %s", entry.Message)
		}
		if strings.Contains(line, "worker") && strings.Contains(entry.Message, "retrying") {
			failed = true
		}
	}
	if !failed {
		t.Error("the failed TokenRequest was not logged")
	}
}

// A replica that restarted, or took a node over from another, adopts the
// tokens the node reports holding (its Hello) instead of requesting them
// again: nothing is sent for them and no TokenRequest is made until they
// are due, when they are refreshed as usual. A token the node reports in a
// form this replica cannot trust (no due time in its version) is
// requested anew, and so is one the node no longer reports.
func TestReplicaAdoptsTheTokensAnEdgeHolds(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	node := edgeNode(t, client, "edge-1")
	clk := clocktesting.NewFakeClock(time.Now())
	first := newRecorder()
	ctrls := start(t, controllers.Config{DisableDevices: true, Clock: clk}, first)
	if _, err := ctrls.Desired(node); err != nil {
		t.Fatal(err)
	}
	vault, err := client.CoreV1().Pods(ns).Create(t.Context(), podWithAudience("vault", node, "vault.example.com"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vaultKey, apiKey := tokensync.Key(ns, "vault", "vault", "token"), apiAccessKey(t, vault)
	held := func(rec *recorder, key feed.Key) *edgesyncv1.ObjectRef {
		msg := tokenOf(rec.waitApplied(t, node, key, nil)).GetMetadata()
		return &edgesyncv1.ObjectRef{Kind: key.Kind, Namespace: key.Namespace, Name: key.Name, Uid: msg.GetUid(), ResourceVersion: msg.GetResourceVersion()}
	}
	vaultRef, apiRef := held(first, vaultKey), held(first, apiKey)

	// The node moves to a second replica; it reports both tokens, one of
	// them with a version from an older server.
	reg := prometheus.NewRegistry()
	second := newRecorder()
	other := start(t, controllers.Config{DisableDevices: true, Clock: clk, Registerer: reg}, second)
	oldForm := &edgesyncv1.ObjectRef{Kind: apiRef.Kind, Namespace: apiRef.Namespace, Name: apiRef.Name, Uid: apiRef.Uid, ResourceVersion: "3f2a9c0d11e4b5a6"}
	other.Adopt(node, []*edgesyncv1.ObjectRef{vaultRef, oldForm})
	objs, err := other.Desired(node)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		if obj.Key == vaultKey {
			t.Errorf("Desired returned the adopted token %s: the node would be sent what it holds", vaultKey)
		}
	}
	if tomb, err := other.Tombstone(vaultKey, vaultRef.Uid); err != nil || tomb != nil {
		t.Fatalf("the adopted token would be deleted at the edge: %v, %v", tomb, err)
	}
	// The old-form token is replaced.
	renewed := tokenOf(second.waitApplied(t, node, apiKey, nil))
	reviewToken(t, client, renewed, "", vault)
	if got := metric(t, reg, "edgesync_tokens_adopted_total", ""); got != 1 {
		t.Errorf("edgesync_tokens_adopted_total = %v, want 1 (the vault token)", got)
	}

	// The adopted 600s token is due at 80 % of its life: refreshed then,
	// by the second replica, and not before.
	for _, obj := range second.sent(node) {
		if obj.Key == vaultKey {
			t.Fatalf("the second replica sent %s before it was due", vaultKey)
		}
	}
	stepped := clk.Now().Add(500 * time.Second)
	clk.Step(500 * time.Second)
	refreshed := tokenOf(second.waitApplied(t, node, vaultKey, nil))
	if refreshed.GetMetadata().GetResourceVersion() == vaultRef.ResourceVersion {
		t.Fatal("the refresh sent the adopted version again")
	}
	if issued := refreshed.GetMetadata().GetCreationTimestamp().GetSeconds(); issued < stepped.Unix() {
		t.Errorf("the second replica obtained %s at %s, before it was due (%s)", vaultKey, time.Unix(issued, 0), stepped)
	}
	reviewToken(t, client, refreshed, "vault.example.com", vault)

	// A node that no longer reports an adopted token gets a new one.
	third := newRecorder()
	again := start(t, controllers.Config{DisableDevices: true, Clock: clk}, third)
	refreshedRef := held(second, vaultKey)
	again.Adopt(node, []*edgesyncv1.ObjectRef{refreshedRef})
	if _, err := again.Desired(node); err != nil {
		t.Fatal(err)
	}
	again.Adopt(node, nil) // the node reconnects with an empty store
	if _, err := again.Desired(node); err != nil {
		t.Fatal(err)
	}
	if tok := tokenOf(third.waitApplied(t, node, vaultKey, nil)); tok.GetToken() == "" {
		t.Fatal("empty token")
	}
}
