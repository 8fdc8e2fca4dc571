// Package simfeed is the benchmark's stand-in for the controllers: an
// in-memory feed.Controllers that holds what each simulated node should hold,
// publishes changes to the server as the real controllers do (each object
// version encoded once, the same bytes handed to every recipient), answers
// every report at once, and counts reports by kind. Unlike internal/feedtest
// it keeps counters, not a log of reports, so it stays small under 10,000
// heartbeating nodes.
package simfeed

import (
	"strconv"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// Namespace holds every simulated object.
const Namespace = "bench"

// Counts are the reports the controllers received.
type Counts struct {
	Heartbeats    int64 `json:"heartbeats"`
	OtherReports  int64 `json:"other_reports"`
	SessionsEnded int64 `json:"sessions_ended"`
}

// Controllers is an in-memory feed.Controllers. Its methods are safe for
// concurrent use.
type Controllers struct {
	heartbeats, other, ended atomic.Int64

	mu        sync.RWMutex // guards the fields below
	publisher feed.Publisher
	desired   map[string]map[feed.Key]*feed.Object
}

var _ feed.Controllers = (*Controllers)(nil)

// New returns controllers that want nothing on any node.
func New() *Controllers {
	return &Controllers{desired: make(map[string]map[feed.Key]*feed.Object)}
}

// SetPublisher sets the server that Put publishes to.
func (c *Controllers) SetPublisher(p feed.Publisher) {
	c.mu.Lock()
	c.publisher = p
	c.mu.Unlock()
}

// Put makes every node in nodes hold obj and publishes it to each.
func (c *Controllers) Put(nodes []string, obj *feed.Object) {
	c.mu.Lock()
	for _, n := range nodes {
		m, ok := c.desired[n]
		if !ok {
			m = make(map[feed.Key]*feed.Object)
			c.desired[n] = m
		}
		m[obj.Key] = obj
	}
	pub := c.publisher
	c.mu.Unlock()
	if pub == nil {
		return
	}
	for _, n := range nodes {
		pub.Publish(n, obj)
	}
}

// Publish publishes obj to every node in nodes without recording it as
// desired: for measurements where nodes never reconnect, so that the
// benchmark's bookkeeping does not cost the server process CPU.
func (c *Controllers) Publish(nodes []string, obj *feed.Object) {
	c.mu.RLock()
	pub := c.publisher
	c.mu.RUnlock()
	if pub == nil {
		return
	}
	for _, n := range nodes {
		pub.Publish(n, obj)
	}
}

// Desired returns what node should hold (feed.Source).
func (c *Controllers) Desired(node string) ([]*feed.Object, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	m := c.desired[node]
	out := make([]*feed.Object, 0, len(m))
	for _, obj := range m {
		out = append(out, obj)
	}
	return out, nil
}

// Tombstone returns the DELETE event of a ConfigMap (feed.Source).
func (c *Controllers) Tombstone(key feed.Key, uid string) (*feed.Object, error) {
	return feed.Tombstone(key, uid)
}

// HandleReport answers every report OK at once (feed.Reporter).
func (c *Controllers) HandleReport(_ string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	if req.GetHeartbeat() != nil {
		c.heartbeats.Add(1)
	} else {
		c.other.Add(1)
	}
	answer(&edgesyncv1.StatusResult{RequestId: req.GetRequestId()})
}

// SessionEnded counts ended sessions (feed.Reporter).
func (c *Controllers) SessionEnded(string) { c.ended.Add(1) }

// Counts returns the reports received so far.
func (c *Controllers) Counts() Counts {
	return Counts{Heartbeats: c.heartbeats.Load(), OtherReports: c.other.Load(), SessionsEnded: c.ended.Load()}
}

// ConfigMap encodes one ConfigMap version whose data is extra plus a filler
// value that makes the encoded event about size bytes.
func ConfigMap(name string, rv uint64, size int, extra map[string]string) (*feed.Object, error) {
	data := map[string]string{}
	for k, v := range extra {
		data[k] = v
	}
	rvs := strconv.FormatUint(rv, 10)
	uid := "uid-" + name
	cm := &corev1pb.ConfigMap{
		Metadata: &metav1pb.ObjectMeta{Namespace: proto.String(Namespace), Name: proto.String(name), Uid: proto.String(uid), ResourceVersion: proto.String(rvs)},
		Data:     data,
	}
	msg := &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{
		Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, ConfigMap: cm,
	}}}
	if pad := size - proto.Size(msg) - 16; pad > 0 {
		filler := make([]byte, pad)
		for i := range filler {
			filler[i] = 'a' + byte(i%26)
		}
		data["filler"] = string(filler)
	}
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: Namespace, Name: name}
	return feed.Encode(key, uid, rvs, false, msg)
}
