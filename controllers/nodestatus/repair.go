package nodestatus

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Repairing a Node the cloud changed behind the edge's back.
//
// While an edge is unreachable, Kubernetes' node lifecycle controller sets
// every condition of its Node to Unknown and taints it unreachable; it
// takes them back only when a status write says Ready again. An edge that
// comes back reports its status anew (edgeclient does after every
// reconnect, and in full every NodeStatusReportFrequency), but a client
// that only heartbeats would leave its Node NotReady for ever. So the
// server owns the other half: it remembers the conditions each edge last
// reported, and a heartbeat arriving while the Node's Ready condition (from
// the cache) says something else writes those conditions again, with a
// fresh lastHeartbeatTime, as the edge's own report would.
//
// Only the conditions are remembered: they are all the node lifecycle
// controller changes, and they are small (a few hundred bytes a node).
// They are kept across sessions (the session of an unreachable edge ends
// before it comes back) and forgotten when the Node is deleted. A replica
// that never received a status from the node (after a failover or a
// restart) has nothing to repair with; the edge's own report after its
// reconnect does it there.

// reportedConditions remembers the conditions each node last reported.
type reportedConditions struct {
	mu    sync.Mutex                        // guards nodes
	nodes map[string][]corev1.NodeCondition // never mutated once stored
}

func (r *reportedConditions) set(node string, conds []corev1.NodeCondition) {
	if len(conds) == 0 {
		return
	}
	r.mu.Lock()
	if r.nodes == nil {
		r.nodes = make(map[string][]corev1.NodeCondition)
	}
	r.nodes[node] = conds
	r.mu.Unlock()
}

func (r *reportedConditions) get(node string) []corev1.NodeCondition {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nodes[node]
}

func (r *reportedConditions) forget(node string) {
	r.mu.Lock()
	delete(r.nodes, node)
	r.mu.Unlock()
}

// readyStatus is the status of the Ready condition in conds, "" when absent.
func readyStatus(conds []corev1.NodeCondition) corev1.ConditionStatus {
	for _, c := range conds {
		if c.Type == corev1.NodeReady {
			return c.Status
		}
	}
	return ""
}

// repairKey queues a repair apart from the edge's own status reports, so
// that neither replaces the other.
func repairKey(node string) string { return "repair/" + node }

// repairRequest marks a queued repair: no edge sent it.
var repairRequest = &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}

// repairIfDiverged queues a write of the conditions node last reported
// when the Ready condition of n (from the cache) differs from them. It runs
// for every heartbeat: a map lookup and a scan of a few conditions.
func (c *Controller) repairIfDiverged(n *corev1.Node) {
	reported := c.reported.get(n.Name)
	want := readyStatus(reported)
	if want == "" || readyStatus(n.Status.Conditions) == want {
		return
	}
	c.repairs.Inc()
	c.reports.Add(repairKey(n.Name), n.Name, repairRequest, func(*edgesyncv1.StatusResult) {})
}

// repair writes the conditions node last reported, unless the cache shows
// they are back (an edge report got there first).
func (c *Controller) repair(ctx context.Context, node string) error {
	reported := c.reported.get(node)
	n, err := edgeNode(&c.cfg, node)
	if err != nil || len(reported) == 0 || readyStatus(n.Status.Conditions) == readyStatus(reported) {
		return nil
	}
	now := metav1.NewTime(c.cfg.Now())
	conds := make([]corev1.NodeCondition, len(reported))
	for i, cond := range reported {
		cond.LastHeartbeatTime = now
		conds[i] = cond
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": conds}})
	if err != nil {
		return fmt.Errorf("encode condition patch: %w", err)
	}
	_, err = c.cfg.Client.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: c.cfg.FieldManager}, "status")
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("write back the conditions node %q reported: %w", node, err)
	}
	c.log.Info("wrote back the conditions the node last reported, which the cloud changed while it was unreachable",
		zap.String("node", node), zap.String("ready", string(readyStatus(reported))))
	return nil
}
