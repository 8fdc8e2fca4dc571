// Package nodestatus writes what edges report about themselves: it
// registers a node's Node object, patches the Node status, and renews the
// node's Lease in kube-node-lease on every heartbeat, so that Kubernetes'
// node lifecycle controller sees edge nodes as a kubelet would show them.
//
// Writes go through a coalescing report queue per node and kind of report,
// so a slow API server sees the latest status of a node, never a backlog.
package nodestatus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	coordinationv1ac "k8s.io/client-go/applyconfigurations/coordination/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/edgesync/edgesync/controllers/internal/reportqueue"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// LeaseNamespace holds the node Leases, as for kubelets.
const LeaseNamespace = "kube-node-lease"

// Config is what the controller needs.
type Config struct {
	// Client writes Nodes and Leases.
	Client kubernetes.Interface
	// Nodes lists the edge nodes from a cache; used for the owner
	// reference of a node's Lease.
	Nodes corelisters.NodeLister
	// EdgeLabel is added to every Node this controller registers.
	EdgeLabel string
	// LeaseDuration is written into each Lease; the node lifecycle
	// controller treats a node whose Lease is older as unhealthy.
	LeaseDuration time.Duration
	// FieldManager names edgesync's writes.
	FieldManager string
	Logger       *zap.Logger
	// Now returns the current time for Lease renewals; time.Now when nil.
	Now func() time.Time
}

// Controller applies node registration, node status and heartbeat reports.
type Controller struct {
	cfg     Config
	log     *zap.Logger
	reports *reportqueue.Queue
}

// New returns a controller; call Run to apply reports.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Nodes == nil || cfg.EdgeLabel == "" {
		return nil, errors.New("nodestatus: Client, Nodes and EdgeLabel are required")
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 40 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Controller{cfg: cfg, log: cfg.Logger}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	c.reports = reportqueue.New(c.log.Named("reports"), c.write)
	return c, nil
}

// Run applies reports with workers goroutines until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) {
	c.reports.Run(ctx, workers)
}

// HandleReport queues a NodeRegistration, NodeStatus or Heartbeat from node.
func (c *Controller) HandleReport(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	var kind string
	switch req.GetMessage().(type) {
	case *edgesyncv1.SyncRequest_NodeRegistration:
		kind = "register"
	case *edgesyncv1.SyncRequest_NodeStatus:
		if req.GetNodeStatus().GetStatus() == nil {
			answer(reportqueue.Result(req.GetRequestId(), status.Error(codes.InvalidArgument, "node_status.status is required")))
			return
		}
		kind = "status"
	case *edgesyncv1.SyncRequest_Heartbeat:
		kind = "lease"
	default:
		answer(reportqueue.Result(req.GetRequestId(), status.Errorf(codes.InvalidArgument, "nodestatus does not handle %T", req.GetMessage())))
		return
	}
	c.reports.Add(kind+"/"+node, node, req, answer)
}

// SessionEnded stops renewing node's Lease: a heartbeat still waiting is
// answered ABORTED instead of written.
func (c *Controller) SessionEnded(node string) {
	c.reports.Drop("lease/"+node, status.Errorf(codes.Aborted, "the session of node %q ended before its lease was renewed", node))
}

func (c *Controller) write(ctx context.Context, node string, req *edgesyncv1.SyncRequest) error {
	switch m := req.GetMessage().(type) {
	case *edgesyncv1.SyncRequest_NodeRegistration:
		return c.register(ctx, node, m.NodeRegistration)
	case *edgesyncv1.SyncRequest_NodeStatus:
		return c.patchStatus(ctx, node, m.NodeStatus.GetStatus())
	case *edgesyncv1.SyncRequest_Heartbeat:
		return c.renewLease(ctx, node)
	}
	return status.Errorf(codes.InvalidArgument, "nodestatus does not handle %T", req.GetMessage())
}

// register creates node's Node unless it exists; an existing Node is left
// as it is.
func (c *Controller) register(ctx context.Context, node string, reg *edgesyncv1.NodeRegistration) error {
	if _, err := c.cfg.Nodes.Get(node); err == nil {
		return nil // already an edge node
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:        node,
		Labels:      maps.Clone(reg.GetLabels()),
		Annotations: maps.Clone(reg.GetAnnotations()),
	}}
	if n.Labels == nil {
		n.Labels = make(map[string]string)
	}
	n.Labels[c.cfg.EdgeLabel] = ""
	for i, t := range reg.GetTaints() {
		var taint corev1.Taint
		if err := fromProto(t, &taint); err != nil {
			return status.Errorf(codes.InvalidArgument, "node_registration.taints[%d]: %v", i, err)
		}
		n.Spec.Taints = append(n.Spec.Taints, taint)
	}
	if reg.GetStatus() != nil {
		if err := fromProto(reg.GetStatus(), &n.Status); err != nil {
			return status.Errorf(codes.InvalidArgument, "node_registration.status: %v", err)
		}
		n.Status.VolumesAttached = nil
	}
	created, err := c.cfg.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{FieldManager: c.cfg.FieldManager})
	if apierrors.IsAlreadyExists(err) {
		c.log.Info("node already exists and is left as it is; it receives objects only while it has the edge label",
			zap.String("node", node), zap.String("label", c.cfg.EdgeLabel))
		return nil
	}
	if err != nil {
		return fmt.Errorf("create node %q: %w", node, err)
	}
	c.log.Info("registered node", zap.String("node", node))
	// Nodes accept their status on create, but write it through the status
	// subresource too in case an admission step dropped it.
	if reg.GetStatus() != nil && len(created.Status.Conditions) == 0 && len(n.Status.Conditions) > 0 {
		return c.patchStatusFrom(ctx, node, &n.Status)
	}
	return nil
}

// patchStatus patches node's status with what the edge reported, keeping
// volumesAttached as the cloud has it.
func (c *Controller) patchStatus(ctx context.Context, node string, reported proto.Message) error {
	var st corev1.NodeStatus
	if err := fromProto(reported, &st); err != nil {
		return status.Errorf(codes.InvalidArgument, "node_status.status: %v", err)
	}
	return c.patchStatusFrom(ctx, node, &st)
}

func (c *Controller) patchStatusFrom(ctx context.Context, node string, st *corev1.NodeStatus) error {
	st.VolumesAttached = nil // omitted from the patch: the cloud owns it
	patch, err := json.Marshal(map[string]any{"status": st})
	if err != nil {
		return fmt.Errorf("encode node status patch: %w", err)
	}
	_, err = c.cfg.Client.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: c.cfg.FieldManager}, "status")
	if apierrors.IsNotFound(err) {
		return status.Errorf(codes.NotFound, "node %q is not registered: send NodeRegistration first", node)
	}
	if err != nil {
		return fmt.Errorf("patch status of node %q: %w", node, err)
	}
	return nil
}

// renewLease applies node's Lease with the current time as renewTime,
// creating it when missing. One write, no read.
func (c *Controller) renewLease(ctx context.Context, node string) error {
	lease := coordinationv1ac.Lease(node, LeaseNamespace).
		WithSpec(coordinationv1ac.LeaseSpec().
			WithHolderIdentity(node).
			WithLeaseDurationSeconds(int32(c.cfg.LeaseDuration / time.Second)).
			WithRenewTime(metav1.NewMicroTime(c.cfg.Now())))
	if n, err := c.cfg.Nodes.Get(node); err == nil {
		// As for kubelets: the Lease goes when its Node goes.
		lease.WithOwnerReferences(metav1ac.OwnerReference().
			WithAPIVersion("v1").WithKind("Node").WithName(n.Name).WithUID(n.UID))
	}
	_, err := c.cfg.Client.CoordinationV1().Leases(LeaseNamespace).Apply(ctx, lease,
		metav1.ApplyOptions{FieldManager: c.cfg.FieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("renew lease of node %q: %w", node, err)
	}
	return nil
}

// unmarshaler is a Kubernetes type with its generated protobuf decoding.
type unmarshaler interface{ Unmarshal([]byte) error }

// fromProto turns a generated protobuf message into the Kubernetes type
// of the same name: both share one wire encoding.
func fromProto(msg proto.Message, obj unmarshaler) error {
	b, err := proto.Marshal(msg)
	if err != nil {
		return err
	}
	return obj.Unmarshal(b)
}
