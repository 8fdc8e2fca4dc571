package router

import (
	"errors"
	"sync"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestAuthCacheKeepsCallersApart: a decision is cached for one caller
// (user, uid, groups, extra) and one Rule, never lent to another caller
// with the same name or to another Rule, and a steady caller costs one
// review of each kind.
func TestAuthCacheKeepsCallersApart(t *testing.T) {
	users := map[string]authenticationv1.UserInfo{
		"token-a":       {Username: "system:serviceaccount:ns:a", UID: "1", Groups: []string{"system:serviceaccounts"}},
		"token-a-admin": {Username: "system:serviceaccount:ns:a", UID: "1", Groups: []string{"system:serviceaccounts", "admins"}},
		"token-a-scope": {Username: "system:serviceaccount:ns:a", UID: "1", Groups: []string{"system:serviceaccounts"}, Extra: map[string]authenticationv1.ExtraValue{"scopes": {"x"}}},
	}
	client := fake.NewClientset()
	var reviews, sars int
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		reviews++
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
		u, ok := users[tr.Spec.Token]
		tr.Status = authenticationv1.TokenReviewStatus{Authenticated: ok, User: u}
		return true, tr, nil
	})
	client.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sars++
		sar := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
		// Only the admins group, or the "x" scope on rule r1, may.
		allowed := len(sar.Spec.Groups) == 2 || len(sar.Spec.Extra["scopes"]) > 0 && sar.Spec.ResourceAttributes.Name == "r1"
		sar.Status = authorizationv1.SubjectAccessReviewStatus{Allowed: allowed}
		return true, sar, nil
	})
	a := newAuthCache(client)
	r1, r2 := ruleKey{"ns", "r1"}, ruleKey{"ns", "r2"}

	tests := []struct {
		token string
		rule  ruleKey
		want  bool
	}{
		{"token-a", r1, false},
		{"token-a-admin", r1, true},
		{"token-a", r1, false}, // not the admin's cached answer
		{"token-a-scope", r1, true},
		{"token-a-scope", r2, false}, // not r1's cached answer
		{"token-a-admin", r2, true},
	}
	for i, tc := range tests {
		c, err := a.authenticate(t.Context(), tc.token)
		if err != nil {
			t.Fatalf("call %d: authenticate %s: %v", i, tc.token, err)
		}
		got, _, err := a.authorize(t.Context(), c, tc.rule)
		if err != nil || got != tc.want {
			t.Errorf("call %d: %s on %s allowed %v (%v), want %v", i, tc.token, tc.rule, got, err, tc.want)
		}
	}
	reviews0, sars0 := reviews, sars
	for range 100 {
		c, _ := a.authenticate(t.Context(), "token-a-admin")
		if ok, _, _ := a.authorize(t.Context(), c, r1); !ok {
			t.Fatal("a cached permission was lost")
		}
	}
	if reviews != reviews0 || sars != sars0 {
		t.Errorf("100 more calls of one caller made %d token reviews and %d access reviews, want both cached", reviews-reviews0, sars-sars0)
	}
	if _, err := a.authenticate(t.Context(), "not-a-token"); !errors.Is(err, errUnauthenticated) {
		t.Errorf("an unknown token: %v, want unauthenticated", err)
	}
}

// TestAuthCacheReviewsOncePerExpiry: calls that find no answer cached at
// the same moment (a burst from a new caller, or every call in flight when
// the answer expires) wait for one TokenReview and one SubjectAccessReview,
// instead of each sending its own to the API server.
func TestAuthCacheReviewsOncePerExpiry(t *testing.T) {
	const callers = 50
	release := make(chan struct{})
	var mu sync.Mutex
	reviews, sars := 0, 0
	client := fake.NewClientset()
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		reviews++
		mu.Unlock()
		<-release // the API server is slow: everyone else arrives meanwhile
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
		tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{Username: "caller", UID: "1"}}
		return true, tr, nil
	})
	client.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		sars++
		mu.Unlock()
		sar := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
		sar.Status.Allowed = true
		return true, sar, nil
	})
	a := newAuthCache(client)
	var started, done sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		started.Add(1)
		done.Go(func() {
			started.Done()
			c, err := a.authenticate(t.Context(), "token")
			if err == nil {
				var ok bool
				if ok, _, err = a.authorize(t.Context(), c, ruleKey{"ns", "r"}); err == nil && !ok {
					err = errors.New("refused")
				}
			}
			errs <- err
		})
	}
	started.Wait()
	close(release)
	done.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if reviews != 1 || sars != 1 {
		t.Errorf("%d calls at once made %d TokenReviews and %d SubjectAccessReviews, want 1 of each", callers, reviews, sars)
	}
}

// BenchmarkAuthCached is the per-call cost of a caller whose token and
// access are cached: what every call to the REST port pays.
func BenchmarkAuthCached(b *testing.B) {
	client := fake.NewClientset()
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
		tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{
			Username: "system:serviceaccount:ns:caller", UID: "0b7c", Groups: []string{"system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated"},
		}}
		return true, tr, nil
	})
	client.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sar := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
		sar.Status.Allowed = true
		return true, sar, nil
	})
	a := newAuthCache(client)
	token := string(make([]byte, 900)) // the size of a ServiceAccount token
	rule := ruleKey{"ns", "rule"}
	for b.Loop() {
		c, err := a.authenticate(b.Context(), token)
		if err != nil {
			b.Fatal(err)
		}
		if ok, _, _ := a.authorize(b.Context(), c, rule); !ok {
			b.Fatal("refused")
		}
	}
}
