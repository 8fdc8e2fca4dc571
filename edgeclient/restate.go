package edgeclient

import (
	"maps"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// DefaultNodeStatusReportFrequency is Config.NodeStatusReportFrequency when
// it is zero: the kubelet's nodeStatusReportFrequency default.
const DefaultNodeStatusReportFrequency = 5 * time.Minute

// restate sends again, after a reconnect, the last node status and the
// last status of every pod the node holds, unless a newer report of the
// same object is on its way.
//
// While the node was unreachable the cloud changed what the edge had
// reported: Kubernetes' node lifecycle controller set the Node's conditions
// to Unknown (and tainted it unreachable) and its pods' Ready condition to
// False. The edge's state did not change, so without this nothing would
// write it back until the next change, and the node would stay NotReady
// with its pods out of their Services' endpoints although the edge is
// back. It runs when a stream's initial sync completes, so that pods the
// cloud deleted meanwhile are gone from the store and not reported; the
// first sync of a Client has nothing to restate.
func (c *Client) restate() {
	c.mu.Lock()
	c.syncs++
	if c.syncs == 1 {
		c.mu.Unlock()
		return
	}
	var node *edgesyncv1.SyncRequest
	if c.nodeStatR != nil && c.reports[nodeStatusKey] == nil {
		node = proto.CloneOf(c.nodeStatR.req)
	}
	pods := maps.Clone(c.podStats)
	c.mu.Unlock()

	if node != nil {
		if r, err := c.submit(nodeStatusKey, node); err == nil {
			c.mu.Lock()
			if c.reports[nodeStatusKey] == r {
				c.nodeStatR, c.nodeStatAt = r, time.Now()
			}
			c.mu.Unlock()
		}
	}
	sent := 0
	for key, req := range pods {
		ps := req.GetPodStatus()
		rec, err := c.store.Get(store.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: ps.GetNamespace(), Name: ps.GetName()})
		c.mu.Lock()
		current := c.podStats[key] == req
		gone := err == nil && (rec == nil || rec.UID != ps.GetUid())
		if current && gone {
			delete(c.podStats, key) // the pod is gone: nothing to repair
		}
		pending := c.reports[key] != nil // a newer status is on its way anyway
		c.mu.Unlock()
		if !current || gone || err != nil || pending {
			continue
		}
		if _, err := c.submit(key, proto.CloneOf(req)); err != nil {
			return // closed
		}
		sent++
	}
	c.log.Debug("reported the node's and pods' statuses again after a reconnect", zap.Bool("node", node != nil), zap.Int("pods", sent))
}
