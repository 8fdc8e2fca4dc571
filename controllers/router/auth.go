package router

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Callers of the REST port authenticate with a bearer token, which the
// API server reviews (TokenReview), and must be allowed to create
// rules/messages for the Rule that routes their call
// (SubjectAccessReview). Both answers are cached for authTTL (failures for
// less), so that a steady stream of calls costs the API server a few
// requests a minute per caller; the calls that find an answer missing or
// expired at the same moment wait for one review together, rather than
// each sending its own (at 1,000 calls/s, dozens would).

const (
	authTTL     = 10 * time.Second
	authFailTTL = 2 * time.Second
	authMax     = 10000
	// reviewTimeout bounds a review shared by several calls, apart from
	// any one caller's context.
	reviewTimeout = 10 * time.Second
)

// MessagesSubresource is the subresource of rules callers need create on.
const MessagesSubresource = "messages"

var errUnauthenticated = errors.New("unauthenticated")

type caller struct {
	user   string
	uid    string
	groups []string
	extra  map[string]authorizationv1.ExtraValue
	// id is everything above in one string, the caller's part of the
	// access cache's key; made once per token review, not per call.
	id string
}

// sarKey is an access decision's key: who asks, for which Rule.
type sarKey struct {
	caller string
	rule   ruleKey
}

type authEntry struct {
	until  time.Time
	caller *caller
	err    error
}

type sarEntry struct {
	until   time.Time
	allowed bool
	reason  string
}

type authCache struct {
	client kubernetes.Interface
	flight singleflight.Group // one review at a time per token, and per caller and Rule

	mu     sync.Mutex // guards the maps
	tokens map[[32]byte]authEntry
	sars   map[sarKey]sarEntry
}

func newAuthCache(c kubernetes.Interface) *authCache {
	return &authCache{client: c, tokens: map[[32]byte]authEntry{}, sars: map[sarKey]sarEntry{}}
}

// authenticate reviews token; errUnauthenticated wraps a refusal.
func (a *authCache) authenticate(ctx context.Context, token string) (*caller, error) {
	key := sha256.Sum256([]byte(token))
	if e, ok := a.cachedToken(key); ok {
		return e.caller, e.err
	}
	v, err, _ := a.flight.Do("token\x00"+string(key[:]), func() (any, error) {
		if e, ok := a.cachedToken(key); ok {
			return e, nil
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reviewTimeout)
		defer cancel()
		return a.reviewToken(ctx, key, token)
	})
	if err != nil {
		return nil, err
	}
	e := v.(authEntry)
	return e.caller, e.err
}

func (a *authCache) cachedToken(key [32]byte) (authEntry, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.tokens[key]
	return e, ok && time.Now().Before(e.until)
}

// reviewToken asks the API server and caches its answer.
func (a *authCache) reviewToken(ctx context.Context, key [32]byte, token string) (authEntry, error) {
	now := time.Now()
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token},
	}, metav1.CreateOptions{})
	if err != nil {
		return authEntry{}, fmt.Errorf("review the token: %w", err) // not cached
	}
	e := authEntry{until: now.Add(authTTL)}
	if !tr.Status.Authenticated {
		msg := tr.Status.Error
		if msg == "" {
			msg = "the API server does not accept it"
		}
		e.err, e.until = fmt.Errorf("%w: bearer token refused: %s", errUnauthenticated, msg), now.Add(authFailTTL)
	} else {
		u := tr.Status.User
		c := &caller{user: u.Username, uid: u.UID, groups: u.Groups, extra: map[string]authorizationv1.ExtraValue{}}
		for k, v := range u.Extra {
			c.extra[k] = authorizationv1.ExtraValue(v)
		}
		// fmt prints maps sorted by key, so equal callers get equal ids.
		c.id = fmt.Sprintf("%q %q %q %q", c.user, c.uid, c.groups, c.extra)
		e.caller = c
	}
	a.mu.Lock()
	if len(a.tokens) >= authMax {
		clear(a.tokens)
	}
	a.tokens[key] = e
	a.mu.Unlock()
	return e, nil
}

// authorize asks whether c may create rules/messages of rule k.
func (a *authCache) authorize(ctx context.Context, c *caller, k ruleKey) (bool, string, error) {
	key := sarKey{caller: c.id, rule: k}
	if e, ok := a.cachedAccess(key); ok {
		return e.allowed, e.reason, nil
	}
	v, err, _ := a.flight.Do("access\x00"+c.id+"\x00"+k.String(), func() (any, error) {
		if e, ok := a.cachedAccess(key); ok {
			return e, nil
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reviewTimeout)
		defer cancel()
		return a.reviewAccess(ctx, key, c, k)
	})
	if err != nil {
		return false, "", err
	}
	e := v.(sarEntry)
	return e.allowed, e.reason, nil
}

func (a *authCache) cachedAccess(key sarKey) (sarEntry, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.sars[key]
	return e, ok && time.Now().Before(e.until)
}

// reviewAccess asks the API server and caches its answer.
func (a *authCache) reviewAccess(ctx context.Context, key sarKey, c *caller, k ruleKey) (sarEntry, error) {
	now := time.Now()
	sar, err := a.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: c.user, UID: c.uid, Groups: c.groups, Extra: c.extra,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: k.namespace, Verb: "create", Group: Rules.Group, Version: Rules.Version,
				Resource: Rules.Resource, Subresource: MessagesSubresource, Name: k.name,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return sarEntry{}, fmt.Errorf("review access: %w", err)
	}
	e := sarEntry{until: now.Add(authTTL), allowed: sar.Status.Allowed, reason: sar.Status.Reason}
	if !e.allowed {
		e.until = now.Add(authFailTTL)
	}
	a.mu.Lock()
	if len(a.sars) >= authMax {
		clear(a.sars)
	}
	a.sars[key] = e
	a.mu.Unlock()
	return e, nil
}
