package edgeclient

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
)

// Report is one report on its way to the server. The client keeps it,
// latest per object, until the server answers, sending it again after every
// reconnect. Unanswered reports live in memory: they do not survive a
// restart of the agent, which reports its current state again anyway.
type Report struct {
	id  uint64
	key string
	req *edgesyncv1.SyncRequest

	sentOn uint64 // stream generation it was last sent on; guarded by Client.mu

	once   sync.Once
	done   chan struct{}
	result *edgesyncv1.StatusResult
	err    error
}

// ID is the report's request_id.
func (r *Report) ID() uint64 { return r.id }

// Done is closed once the report has its outcome.
func (r *Report) Done() <-chan struct{} { return r.done }

// Wait waits for the server's answer. It returns the StatusResult and, when
// the server refused the report, a gRPC status error with the server's code
// and message. ErrSuperseded and ErrClosed say the report got no answer;
// ctx ending only stops the wait.
func (r *Report) Wait(ctx context.Context) (*edgesyncv1.StatusResult, error) {
	select {
	case <-r.done:
		return r.result, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *Report) resolve(res *edgesyncv1.StatusResult, err error) {
	r.once.Do(func() {
		r.result = res
		if err == nil && res.GetCode() != int32(codes.OK) {
			err = status.Error(codes.Code(res.GetCode()), res.GetMessage())
		}
		r.err = err
		close(r.done)
	})
}

// failed reports whether the report ended without being accepted.
func (r *Report) failed() bool {
	select {
	case <-r.done:
		return r.err != nil
	default:
		return false
	}
}

// submit queues a report under key, replacing an unanswered one with the
// same key, and wakes the sender.
func (c *Client) submit(key string, req *edgesyncv1.SyncRequest) (*Report, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.lastID++
	r := &Report{id: c.lastID, key: key, req: req, done: make(chan struct{})}
	req.RequestId = r.id
	old := c.reports[key]
	if old != nil {
		delete(c.byID, old.id)
	}
	c.reports[key] = r
	c.byID[r.id] = r
	wake := c.wake
	c.mu.Unlock()
	if old != nil {
		old.resolve(nil, ErrSuperseded)
	}
	if wake != nil {
		wake()
	}
	return r, nil
}

// answer resolves the report a StatusResult answers. Results for reports
// that were superseded meanwhile are dropped.
func (c *Client) answer(res *edgesyncv1.StatusResult) {
	c.mu.Lock()
	r := c.byID[res.GetRequestId()]
	if r != nil {
		delete(c.byID, r.id)
		if c.reports[r.key] == r {
			delete(c.reports, r.key)
		}
	}
	c.mu.Unlock()
	if r == nil {
		if c.eventAnswered(res) {
			return
		}
		c.log.Debug("status result for no pending report", zap.Uint64("request_id", res.GetRequestId()))
		return
	}
	if res.GetCode() != int32(codes.OK) {
		c.log.Info("server refused report", zap.String("report", r.key), zap.Int32("code", res.GetCode()), zap.String("message", res.GetMessage()))
	}
	r.resolve(res, nil)
	switch {
	case res.GetCode() == int32(codes.NotFound) && (r.key == heartbeatKey || r.key == nodeStatusKey):
		c.registerAgain(res.GetMessage())
	case res.GetCode() == int32(codes.OK) && r.key == registrationKey:
		// The Node exists now: renew its Lease without waiting a whole
		// interval (heartbeats were held back while it registered).
		c.heartbeat()
	}
}

// registerAgain sends the node's registration again, unless one is on its
// way: the server answered a heartbeat or node status NOT_FOUND, so the
// node's Node was deleted (or never created). The registration carries the
// latest node status reported, if any, as the new Node's status.
func (c *Client) registerAgain(why string) {
	c.mu.Lock()
	reg := c.registration
	pending := c.reports[registrationKey] != nil
	if reg != nil && !pending {
		reg = proto.CloneOf(reg)
		if st := c.nodeStatR.requestStatus(); st != nil {
			reg.Status = proto.CloneOf(st)
		}
	}
	c.mu.Unlock()
	if reg == nil || pending {
		return
	}
	c.log.Info("the server says the node's Node does not exist; registering it again", zap.String("reason", why))
	_, _ = c.submit(registrationKey, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeRegistration{NodeRegistration: reg}})
}

// requestStatus is the node status r reported; nil when r is nil.
func (r *Report) requestStatus() *corev1pb.NodeStatus {
	if r == nil {
		return nil
	}
	return r.req.GetNodeStatus().GetStatus()
}

// unsent returns, oldest first, the reports not yet sent on stream
// generation gen, and marks them sent on it.
func (c *Client) unsent(gen uint64) []*Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Report
	for _, r := range c.reports {
		if r.sentOn != gen {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *Report) int { return cmp.Compare(a.id, b.id) })
	return out
}

// markSent records that r went out on stream generation gen.
func (c *Client) markSent(r *Report, gen uint64) {
	c.mu.Lock()
	r.sentOn = gen
	c.mu.Unlock()
}

// drop gives up on r with err (for example a report too large to send).
func (c *Client) drop(r *Report, err error) {
	c.mu.Lock()
	delete(c.byID, r.id)
	if c.reports[r.key] == r {
		delete(c.reports, r.key)
	}
	c.mu.Unlock()
	r.resolve(nil, err)
}

// NodeRegistration describes the Node to create when it does not exist.
type NodeRegistration struct {
	Labels      map[string]string
	Annotations map[string]string
	Taints      []corev1.Taint
	Status      corev1.NodeStatus
}

// Keys of the node's own reports.
const (
	registrationKey = "node/registration"
	nodeStatusKey   = "node/status"
	heartbeatKey    = "node/heartbeat"
)

// RegisterNode asks the cloud to create the node's Node object if it does
// not exist yet. The client keeps the registration: whenever the server
// answers a heartbeat or node status NOT_FOUND (the Node was deleted), it
// sends it again by itself, with the latest node status reported.
func (c *Client) RegisterNode(reg NodeRegistration) (*Report, error) {
	msg := &edgesyncv1.NodeRegistration{Labels: reg.Labels, Annotations: reg.Annotations}
	for i := range reg.Taints {
		t := &corev1pb.Taint{}
		if err := toProto(&reg.Taints[i], t); err != nil {
			return nil, fmt.Errorf("encode taint %s: %w", reg.Taints[i].Key, err)
		}
		msg.Taints = append(msg.Taints, t)
	}
	msg.Status = &corev1pb.NodeStatus{}
	if err := toProto(&reg.Status, msg.Status); err != nil {
		return nil, fmt.Errorf("encode node status: %w", err)
	}
	c.mu.Lock()
	c.registration = msg
	c.mu.Unlock()
	return c.submit(registrationKey, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeRegistration{NodeRegistration: proto.CloneOf(msg)}})
}

// ReportNodeStatus reports the node's status when it differs from the last
// one reported (ignoring conditions' lastHeartbeatTime), or when that one
// was sent more than Config.NodeStatusReportFrequency ago, as the kubelet
// does. Otherwise it returns the previous report. After a reconnect the
// client sends the last status again by itself (see restate.go).
func (c *Client) ReportNodeStatus(st *corev1.NodeStatus) (*Report, error) {
	norm := st.DeepCopy()
	for i := range norm.Conditions {
		norm.Conditions[i].LastHeartbeatTime = metav1.Time{}
	}
	now := time.Now()
	c.mu.Lock()
	if prev := c.nodeStatR; prev != nil && !prev.failed() && equality.Semantic.DeepEqual(norm, c.nodeStat) &&
		now.Sub(c.nodeStatAt) < c.cfg.NodeStatusReportFrequency {
		c.mu.Unlock()
		return prev, nil
	}
	c.mu.Unlock()
	msg := &corev1pb.NodeStatus{}
	if err := toProto(st, msg); err != nil {
		return nil, fmt.Errorf("encode node status: %w", err)
	}
	r, err := c.submit(nodeStatusKey, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeStatus{NodeStatus: &edgesyncv1.NodeStatus{Status: msg}}})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.nodeStat, c.nodeStatR, c.nodeStatAt = norm, r, now
	c.mu.Unlock()
	return r, nil
}

// ReportPodStatus reports the status of a pod bound to the node. uid must
// be the uid of the pod as the node received it. The client keeps the last
// status of each pod it holds and reports it again after a reconnect.
func (c *Client) ReportPodStatus(namespace, name, uid string, st *corev1.PodStatus) (*Report, error) {
	msg := &corev1pb.PodStatus{}
	if err := toProto(st, msg); err != nil {
		return nil, fmt.Errorf("encode status of pod %s/%s: %w", namespace, name, err)
	}
	key := podReportKey(namespace, name)
	req := &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_PodStatus{PodStatus: &edgesyncv1.PodStatus{
		Namespace: namespace, Name: name, Uid: uid, Status: msg,
	}}}
	c.mu.Lock()
	c.podStats[key] = req
	c.mu.Unlock()
	return c.submit(key, proto.CloneOf(req))
}

func podReportKey(namespace, name string) string { return "pod/" + namespace + "/" + name }

// ReportDeviceStatus reports the observed state of a device bound to the
// node. The client owns st after the call.
func (c *Client) ReportDeviceStatus(st *edgesyncv1.DeviceStatus) (*Report, error) {
	if st.GetName() == "" {
		return nil, fmt.Errorf("device status without a device name")
	}
	return c.submit("device/"+st.GetNamespace()+"/"+st.GetName(), &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_DeviceStatus{DeviceStatus: st}})
}

// Heartbeat queues a Heartbeat now, replacing an unanswered one, for an
// agent whose node renews its liveness itself (a kubelet updating its
// Lease through package localapi); the client also sends one every
// interval the server asked for. While the node's registration is
// unanswered it returns the registration's report instead: the server
// refuses heartbeats for a Node that does not exist yet, and the first
// heartbeat follows the registration's answer.
func (c *Client) Heartbeat() (*Report, error) {
	c.mu.Lock()
	if r := c.reports[registrationKey]; r != nil {
		c.mu.Unlock()
		return r, nil
	}
	c.mu.Unlock()
	return c.submit(heartbeatKey, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
}

// heartbeat queues a Heartbeat, replacing an unanswered one. While the
// node's registration is unanswered it sends none: the server refuses
// heartbeats for a Node that does not exist yet (NOT_FOUND), so the first
// heartbeat follows the registration's answer instead (see answer).
func (c *Client) heartbeat() {
	if c.cfg.HeartbeatWhile != nil && !c.cfg.HeartbeatWhile() {
		return
	}
	c.mu.Lock()
	registering := c.reports[registrationKey] != nil
	c.mu.Unlock()
	if registering {
		return
	}
	_, _ = c.submit(heartbeatKey, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
}
