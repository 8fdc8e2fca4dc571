package edgeclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// subscriptionsKey keys the Subscriptions report: the latest set wins.
const subscriptionsKey = "subscriptions"

// subscriptions is the node's set of subscriptions, sent in every Hello
// and, when it changes, in a Subscriptions report.
type subscriptions struct {
	mu     sync.Mutex // guards the fields below
	loaded bool       // set taken from the store (what was active before a restart)
	set    map[string]*edgesyncv1.Subscription
}

// ResourceKey is the key a node holds an object of a subscribed resource
// under (KIND_RESOURCE): its namespace and "<apiVersion>/<resource>/<name>".
func ResourceKey(group, version, resource, namespace, name string) Key {
	apiVersion := version
	if group != "" {
		apiVersion = group + "/" + version
	}
	return Key{Kind: edgesyncv1.Kind_KIND_RESOURCE, Namespace: namespace, Name: apiVersion + "/" + resource + "/" + name}
}

// SubscriptionID derives a subscription's id from what it asks for, so
// that asking twice for the same is one subscription.
func SubscriptionID(sub *edgesyncv1.Subscription) string {
	h := sha256.New()
	for _, f := range []string{
		sub.GetServiceAccountNamespace(), sub.GetServiceAccountName(), sub.GetGroup(), sub.GetVersion(),
		sub.GetResource(), sub.GetNamespace(), sub.GetLabelSelector(), sub.GetFieldSelector(),
	} {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	return "s-" + hex.EncodeToString(h.Sum(nil)[:12])
}

// Subscribe adds a subscription to the node's set (its Id derived with
// SubscriptionID when empty) and returns its id. The cloud sends the
// objects it covers (Resources) and its state (SubscriptionState,
// WaitSubscription); the set is sent in every Hello, so it survives
// reconnects, and what was ACTIVE when the agent stopped is subscribed
// again when it starts. Subscribing again to what the set holds changes
// nothing.
func (c *Client) Subscribe(sub *edgesyncv1.Subscription) (string, error) {
	sub = proto.CloneOf(sub)
	if sub.GetId() == "" {
		sub.Id = SubscriptionID(sub)
	}
	c.loadSubscriptions()
	c.subs.mu.Lock()
	if old, ok := c.subs.set[sub.GetId()]; ok && proto.Equal(old, sub) {
		c.subs.mu.Unlock()
		return sub.GetId(), nil
	}
	c.subs.set[sub.GetId()] = sub
	c.subs.mu.Unlock()
	return sub.GetId(), c.sendSubscriptions()
}

// Unsubscribe removes a subscription from the node's set; the cloud then
// deletes its state and the objects no other subscription covers.
func (c *Client) Unsubscribe(id string) error {
	c.loadSubscriptions()
	c.subs.mu.Lock()
	_, ok := c.subs.set[id]
	delete(c.subs.set, id)
	c.subs.mu.Unlock()
	if !ok {
		return nil
	}
	return c.sendSubscriptions()
}

// sendSubscriptions reports the whole set; a newer set replaces one not
// sent yet.
func (c *Client) sendSubscriptions() error {
	_, err := c.submit(subscriptionsKey, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Subscriptions{
		Subscriptions: &edgesyncv1.Subscriptions{Subscriptions: c.subscriptionSet()},
	}})
	return err
}

// subscriptionSet returns the node's subscriptions, ordered by id.
func (c *Client) subscriptionSet() []*edgesyncv1.Subscription {
	c.loadSubscriptions()
	c.subs.mu.Lock()
	defer c.subs.mu.Unlock()
	out := make([]*edgesyncv1.Subscription, 0, len(c.subs.set))
	for _, s := range c.subs.set {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *edgesyncv1.Subscription) int { return strings.Compare(a.GetId(), b.GetId()) })
	return out
}

// loadSubscriptions starts the set, once, from the subscriptions the store
// holds as ACTIVE: an agent restarted offline keeps serving them, and
// subscribes to them again when it connects.
func (c *Client) loadSubscriptions() {
	c.subs.mu.Lock()
	defer c.subs.mu.Unlock()
	if c.subs.loaded {
		return
	}
	c.subs.loaded = true
	c.subs.set = map[string]*edgesyncv1.Subscription{}
	recs, err := c.store.List(edgesyncv1.Kind_KIND_SUBSCRIPTION)
	if err != nil {
		c.log.Warn("cannot read the subscriptions held", zap.Error(err))
		return
	}
	for _, r := range recs {
		o, err := Decode(r)
		if err != nil || o.Subscription.GetState() != edgesyncv1.SubscriptionState_SUBSCRIPTION_STATE_ACTIVE {
			continue
		}
		if s := o.Subscription.GetSubscription(); s.GetId() != "" {
			c.subs.set[s.GetId()] = s
		}
	}
}

// SubscriptionState returns the state the cloud last sent for subscription
// id, or nil when none is held (not decided yet, or not subscribed).
func (c *Client) SubscriptionState(id string) (*edgesyncv1.SubscriptionEvent, error) {
	o, ok, err := c.Get(Key{Kind: edgesyncv1.Kind_KIND_SUBSCRIPTION, Name: id})
	if err != nil || !ok {
		return nil, err
	}
	return o.Subscription, nil
}

// ErrSubscriptionEnded wraps the cloud's reason when WaitSubscription finds
// a subscription ended; errors.As to a gRPC status gives its code.
var ErrSubscriptionEnded = errors.New("subscription ended")

// WaitSubscription waits until the node holds the state of subscription id
// for the set it holds now (the same subscription, not an earlier one of
// the same id): nil once ACTIVE (the objects it covers are held), a
// gRPC status error with the cloud's code and message once ENDED, or ctx's
// error.
func (c *Client) WaitSubscription(ctx context.Context, id string) error {
	c.subs.mu.Lock()
	want := c.subs.set[id]
	c.subs.mu.Unlock()
	for {
		changed := c.StateChanged()
		st, err := c.SubscriptionState(id)
		if err != nil {
			return err
		}
		if st != nil && (want == nil || proto.Equal(st.GetSubscription(), want)) {
			switch st.GetState() {
			case edgesyncv1.SubscriptionState_SUBSCRIPTION_STATE_ACTIVE:
				return nil
			case edgesyncv1.SubscriptionState_SUBSCRIPTION_STATE_ENDED:
				return fmt.Errorf("%w: %w", ErrSubscriptionEnded, status.Error(codes.Code(st.GetCode()), st.GetMessage()))
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Resources returns the held objects of one resource, in one namespace or
// all (namespace ""), ordered by namespace and name.
func (c *Client) Resources(group, version, resource, namespace string) ([]*edgesyncv1.ResourceEvent, error) {
	recs, err := c.store.List(edgesyncv1.Kind_KIND_RESOURCE)
	if err != nil {
		return nil, err
	}
	prefix := ResourceKey(group, version, resource, "", "").Name
	var out []*edgesyncv1.ResourceEvent
	for _, r := range recs {
		if !strings.HasPrefix(r.Key.Name, prefix) || strings.Contains(r.Key.Name[len(prefix):], "/") {
			continue
		}
		if namespace != "" && r.Key.Namespace != namespace {
			continue
		}
		o, err := Decode(r)
		if err != nil {
			return nil, err
		}
		out = append(out, o.Resource)
	}
	return out, nil
}

// ErrOffline is returned by WriteResource while the node has no stream to
// the cloud: writes of edge applications are not queued.
var ErrOffline = errors.New("the node is offline: writes reach the API server only while it is connected to the cloud")

// WriteResource makes one write of an edge application to the API server,
// through the cloud, with the application's own ServiceAccount token
// (ResourceWrite): the API server authorizes it as the application. It
// waits for the answer (the API server's status and body) or ctx; while
// the node is offline it returns ErrOffline at once, and a write whose
// stream ends before the answer is not sent again (ErrOffline too).
func (c *Client) WriteResource(ctx context.Context, w *edgesyncv1.ResourceWrite) (*edgesyncv1.ResourceWriteResult, error) {
	if !c.State().Connected {
		return nil, ErrOffline
	}
	c.mu.Lock()
	c.writes++
	key := fmt.Sprintf("resource-write/%d", c.writes)
	c.mu.Unlock()
	r, err := c.submit(key, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_ResourceWrite{ResourceWrite: proto.CloneOf(w)}})
	if err != nil {
		return nil, err
	}
	for {
		changed := c.StateChanged()
		select {
		case <-r.Done():
			res, err := r.Wait(ctx)
			if err != nil {
				return nil, err
			}
			return res.GetWriteResult(), nil
		case <-changed:
			if !c.State().Connected {
				c.drop(r, ErrOffline)
			}
		case <-ctx.Done():
			c.drop(r, ctx.Err())
			return nil, ctx.Err()
		}
	}
}
