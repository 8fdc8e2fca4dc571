// Package nodestatus writes what edges report about themselves: it
// registers a node's Node object, patches the Node status, and keeps the
// node's Lease in kube-node-lease renewed while the node sends heartbeats,
// so that Kubernetes' node lifecycle controller sees edge nodes as a kubelet
// would show them.
//
// Only edge nodes are written: a report for a Node that does not exist
// (never registered, or deleted) is refused NOT_FOUND, and one for a Node
// without the edge label (a cloud kubelet's) PERMISSION_DENIED, both from
// the cache and before any write, so that a heartbeat never recreates the
// Lease of a deleted Node and an edge certificate never keeps a cloud
// node's Lease alive. NodeRegistration creates a missing Node again; it is
// answered once the cache holds the Node, so that the reports that follow
// it are accepted. Every Lease is owned by its Node, as a kubelet's is, so
// that the garbage collector deletes it with the Node.
//
// Node and status writes go through a coalescing report queue per node and
// kind of report, so a slow API server sees the latest status of a node,
// never a backlog.
//
// Leases are renewed apart from heartbeats, as kubelets do: a heartbeat
// that arrives less than LeaseRenewInterval after the node's last
// successful renewal is answered OK at once, without a write; otherwise it
// queues one renewal for the node: an update of the Lease this replica
// wrote last, as kubelets renew theirs (a JSON merge patch of the Lease
// spec when there is none or it is stale, a create when the Lease is
// missing). Renewals have their own queue,
// workers and client (its own QPS and burst), so status writes never starve
// them and they never starve status writes. A replica holding N nodes
// therefore writes about N / LeaseRenewInterval Leases per second; the
// edgesync_lease_* metrics show whether it keeps up, and a warning is
// logged when a Lease went unrenewed for more than three quarters of its
// duration.
//
// A heartbeat also repairs a Node whose Ready condition the cloud changed
// behind the edge's back (the node lifecycle controller, while the edge was
// unreachable): the conditions the edge last reported are written again
// (repair.go).
package nodestatus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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
	// Client writes Nodes (and Leases when LeaseClient is nil).
	Client kubernetes.Interface
	// LeaseClient writes Leases. Give it its own QPS and burst so that
	// renewals and status writes cannot starve each other; Client when nil.
	LeaseClient kubernetes.Interface
	// Nodes lists the Nodes from a cache: every edge node, and at least
	// the name, uid and labels of every other Node. Reports are checked
	// against it, and it gives the owner reference of a node's Lease.
	Nodes corelisters.NodeLister
	// EdgeLabel marks edge nodes (any value); it is added to every Node
	// this controller registers.
	EdgeLabel string
	// LeaseDuration is written into each Lease; the node lifecycle
	// controller treats a node whose Lease is older as unhealthy. 40s when
	// zero.
	LeaseDuration time.Duration
	// LeaseRenewInterval is how often a node's Lease is renewed while the
	// node sends heartbeats at least that often; three eighths of
	// LeaseDuration when zero (15 s of 40 s: controllers.DefaultLeaseRenewInterval
	// says why).
	// It must be less than LeaseDuration/2.
	LeaseRenewInterval time.Duration
	// LeaseQPS and LeaseBurst, when LeaseQPS is positive, bound the Lease
	// writes (each renewal's update, patch or create) with a token bucket
	// of the controller's own, taken before each write. Give LeaseClient no
	// limiter of its own then (rest.Config.QPS < 0): client-go's costs an
	// extra URL template per request, a fifth of a renewal's client CPU.
	LeaseQPS   float32
	LeaseBurst int
	// LeaseWorkers is the number of goroutines writing Leases; 16 when
	// zero. Enough to keep LeaseClient's QPS busy at the API server's
	// latency.
	LeaseWorkers int
	// Registerer registers the edgesync_lease_* metrics; none when nil.
	Registerer prometheus.Registerer
	// KubeletEndpoint, when its Address is set, is where the kube-apiserver
	// reaches the kubelet API of the nodes held by this replica (package
	// server/kubeletapi): it replaces the addresses and kubelet port edges
	// report, in every status write and registration.
	KubeletEndpoint KubeletEndpoint
	// FieldManager names edgesync's writes.
	FieldManager string
	// WriteGuard, when set, admits each write for a node (with several
	// replicas: only while this replica owns the node).
	WriteGuard reportqueue.Guard
	Logger     *zap.Logger
	// Now returns the current time for Lease renewals; time.Now when nil.
	Now func() time.Time
}

// KubeletEndpoint is the address (an IP, written as the Node's only
// InternalIP) and port (status.daemonEndpoints.kubeletEndpoint.Port) of a
// replica's kubelet API.
type KubeletEndpoint struct {
	Address string
	Port    int32
}

// Controller applies node registration, node status and heartbeat reports.
type Controller struct {
	cfg     Config
	log     *zap.Logger
	reports *reportqueue.Queue // registrations and node status
	leases  *leases
	cached  waiters // registrations waiting for their Node in the cache
	// reported and repairs: see repair.go.
	reported reportedConditions
	repairs  prometheus.Counter
}

// New returns a controller; call Run to apply reports.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Nodes == nil || cfg.EdgeLabel == "" {
		return nil, errors.New("nodestatus: Client, Nodes and EdgeLabel are required")
	}
	if cfg.LeaseClient == nil {
		cfg.LeaseClient = cfg.Client
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 40 * time.Second
	}
	if cfg.LeaseRenewInterval == 0 {
		cfg.LeaseRenewInterval = cfg.LeaseDuration * 3 / 8
	}
	if cfg.LeaseRenewInterval < 0 || cfg.LeaseRenewInterval >= cfg.LeaseDuration/2 {
		return nil, fmt.Errorf("nodestatus: lease renew interval %s must be positive and less than half the lease duration %s, so that one late renewal does not expire the Lease",
			cfg.LeaseRenewInterval, cfg.LeaseDuration)
	}
	if cfg.LeaseWorkers <= 0 {
		cfg.LeaseWorkers = 16
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Controller{cfg: cfg, log: cfg.Logger}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	var err error
	if c.leases, err = newLeases(&c.cfg, c.log.Named("leases")); err != nil {
		return nil, err
	}
	c.repairs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "edgesync_node_status_repairs_total",
		Help: "Heartbeats that found a Node's Ready condition changed by the cloud (the node lifecycle controller, while the node was unreachable) and queued a write of the conditions the node last reported.",
	})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.repairs); err != nil {
			return nil, fmt.Errorf("nodestatus: register repair metric: %w", err)
		}
	}
	c.reports = reportqueue.New(c.log.Named("reports"), reportqueue.Guarded(cfg.WriteGuard, c.write))
	return c, nil
}

// Run applies reports with workers goroutines, and renews Leases with
// Config.LeaseWorkers more, until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	wg.Go(func() { c.leases.queue.Run(ctx, c.cfg.LeaseWorkers) })
	c.reports.Run(ctx, workers)
	wg.Wait()
}

// HandleReport queues a NodeRegistration or NodeStatus from node. A
// Heartbeat is answered at once when node's Lease was renewed recently,
// and queues a renewal otherwise.
func (c *Controller) HandleReport(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	var kind string
	switch req.GetMessage().(type) {
	case *edgesyncv1.SyncRequest_NodeRegistration:
		kind = "register"
	case *edgesyncv1.SyncRequest_NodeStatus:
		if req.GetNodeStatus().GetStatus() == nil {
			answer(reportqueue.Result(req.GetRequestId(), feed.NewError(feed.ErrInvalid, "node_status.status is required")))
			return
		}
		if _, err := edgeNode(&c.cfg, node); err != nil {
			answer(reportqueue.Result(req.GetRequestId(), err))
			return
		}
		kind = "status"
	case *edgesyncv1.SyncRequest_Heartbeat:
		n, err := edgeNode(&c.cfg, node)
		if err != nil {
			answer(reportqueue.Result(req.GetRequestId(), err))
			return
		}
		c.repairIfDiverged(n)
		c.leases.heartbeat(node, req, answer)
		return
	default:
		answer(reportqueue.Result(req.GetRequestId(), feed.Errorf(feed.ErrInvalid, "nodestatus does not handle %T", req.GetMessage())))
		return
	}
	c.reports.Add(kind+"/"+node, node, req, answer)
}

// SessionEnded stops renewing node's Lease: a heartbeat still waiting is
// answered ABORTED instead of written, and the time of the node's last
// renewal is forgotten (its next session renews at its first heartbeat).
func (c *Controller) SessionEnded(node string) {
	c.leases.forget(node)
	c.leases.queue.Drop(node, feed.Errorf(feed.ErrAborted, "the session of node %q ended before its lease was renewed", node))
}

// NodeDeleted forgets the time of node's last Lease renewal and the
// conditions it last reported; call it when
// the Node is deleted or stops being an edge node. Renewals still queued
// check the cache again and are refused.
func (c *Controller) NodeDeleted(node string) {
	c.leases.forget(node)
	c.reported.forget(node)
}

func (c *Controller) write(ctx context.Context, node string, req *edgesyncv1.SyncRequest) error {
	if req == nil { // SessionStarted
		return c.writeEndpoint(ctx, node)
	}
	switch m := req.GetMessage().(type) {
	case *edgesyncv1.SyncRequest_NodeRegistration:
		return c.register(ctx, node, m.NodeRegistration)
	case *edgesyncv1.SyncRequest_NodeStatus:
		return c.patchStatus(ctx, node, m.NodeStatus.GetStatus())
	case *edgesyncv1.SyncRequest_Heartbeat: // queued by repairIfDiverged
		return c.repair(ctx, node)
	}
	return feed.Errorf(feed.ErrInvalid, "nodestatus does not handle %T", req.GetMessage())
}

// register creates node's Node unless it exists; an existing edge Node is
// left as it is, and a Node that is not an edge node is refused. It returns
// once the cache holds the Node.
//
// The labels and taints asked for are checked first, whether the Node
// exists or not (checkRegistration: NodeRestriction's rules); an existing
// Node keeps the labels it has, so those an operator set stay.
func (c *Controller) register(ctx context.Context, node string, reg *edgesyncv1.NodeRegistration) error {
	var taints []corev1.Taint
	for i, t := range reg.GetTaints() {
		var taint corev1.Taint
		if err := fromProto(t, &taint); err != nil {
			return feed.Errorf(feed.ErrInvalid, "node_registration.taints[%d]: %v", i, err)
		}
		taints = append(taints, taint)
	}
	if err := checkRegistration(node, c.cfg.EdgeLabel, reg.GetLabels(), taints); err != nil {
		return err
	}
	if n, err := c.cfg.Nodes.Get(node); err == nil {
		if !isEdge(&c.cfg, n) {
			return notEdge(&c.cfg, node)
		}
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
	n.Spec.Taints = taints
	if reg.GetStatus() != nil {
		if err := fromProto(reg.GetStatus(), &n.Status); err != nil {
			return feed.Errorf(feed.ErrInvalid, "node_registration.status: %v", err)
		}
		n.Status.VolumesAttached = nil
	}
	c.ownEndpoint(&n.Status)
	created, err := c.cfg.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{FieldManager: c.cfg.FieldManager})
	if apierrors.IsAlreadyExists(err) {
		// Created since the cache was read (by another replica, or by an
		// operator): one read tells whether it is an edge node.
		existing, err := c.cfg.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read node %q: %w", node, err)
		}
		if !isEdge(&c.cfg, existing) {
			return notEdge(&c.cfg, node)
		}
		return c.waitCached(ctx, node, existing.UID)
	}
	if err != nil {
		return fmt.Errorf("create node %q: %w", node, err)
	}
	c.reported.set(node, n.Status.Conditions)
	c.log.Info("registered node", zap.String("node", node))
	// Nodes accept their status on create, but write it through the status
	// subresource too in case an admission step dropped it.
	if reg.GetStatus() != nil && len(created.Status.Conditions) == 0 && len(n.Status.Conditions) > 0 {
		if err := c.patchStatusFrom(ctx, node, &n.Status); err != nil {
			return err
		}
	}
	return c.waitCached(ctx, node, created.UID)
}

// patchStatus patches node's status with what the edge reported, keeping
// volumesAttached as the cloud has it.
func (c *Controller) patchStatus(ctx context.Context, node string, reported proto.Message) error {
	var st corev1.NodeStatus
	if err := fromProto(reported, &st); err != nil {
		return feed.Errorf(feed.ErrInvalid, "node_status.status: %v", err)
	}
	return c.patchStatusFrom(ctx, node, &st)
}

func (c *Controller) patchStatusFrom(ctx context.Context, node string, st *corev1.NodeStatus) error {
	st.VolumesAttached = nil // omitted from the patch: the cloud owns it
	patch, err := c.statusPatch(st)
	if err != nil {
		return fmt.Errorf("encode node status patch: %w", err)
	}
	_, err = c.cfg.Client.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: c.cfg.FieldManager}, "status")
	if apierrors.IsNotFound(err) {
		return feed.Errorf(feed.ErrNotFound, "Node %q does not exist (deleted): send NodeRegistration to register it", node)
	}
	if err != nil {
		return fmt.Errorf("patch status of node %q: %w", node, err)
	}
	c.reported.set(node, st.Conditions)
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

// ownEndpoint puts this replica's kubelet endpoint into st, when set.
func (c *Controller) ownEndpoint(st *corev1.NodeStatus) {
	ep := c.cfg.KubeletEndpoint
	if ep.Address == "" {
		return
	}
	st.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ep.Address}}
	st.DaemonEndpoints.KubeletEndpoint.Port = ep.Port
}

// statusPatch is the strategic merge patch that writes st. With a kubelet
// endpoint, the addresses are replaced whole (a merge would keep a
// Hostname address an edge reported, which the apiserver prefers).
func (c *Controller) statusPatch(st *corev1.NodeStatus) ([]byte, error) {
	if c.cfg.KubeletEndpoint.Address == "" {
		return json.Marshal(map[string]any{"status": st})
	}
	c.ownEndpoint(st)
	b, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		return nil, err
	}
	fields["addresses"] = []any{
		map[string]any{"$patch": "replace"},
		map[string]any{"type": string(corev1.NodeInternalIP), "address": c.cfg.KubeletEndpoint.Address},
	}
	return json.Marshal(map[string]any{"status": fields})
}

// SessionStarted writes this replica's kubelet endpoint into node's status
// when the Node shows another, so that the kube-apiserver sends kubectl
// logs/exec/port-forward for the node to the replica that now holds its
// session, without waiting for the edge's next status report. A Node not
// registered yet gets it at registration.
func (c *Controller) SessionStarted(node string) {
	ep := c.cfg.KubeletEndpoint
	if ep.Address == "" {
		return
	}
	n, err := c.cfg.Nodes.Get(node)
	if err != nil || !isEdge(&c.cfg, n) {
		return
	}
	if n.Status.DaemonEndpoints.KubeletEndpoint.Port == ep.Port && len(n.Status.Addresses) == 1 &&
		n.Status.Addresses[0] == (corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ep.Address}) {
		return
	}
	c.reports.Add("endpoint/"+node, node, nil, func(*edgesyncv1.StatusResult) {})
}

// writeEndpoint patches node's addresses and kubelet port to this
// replica's kubelet endpoint.
func (c *Controller) writeEndpoint(ctx context.Context, node string) error {
	ep := c.cfg.KubeletEndpoint
	patch, err := json.Marshal(map[string]any{"status": map[string]any{
		"addresses": []any{
			map[string]any{"$patch": "replace"},
			map[string]any{"type": string(corev1.NodeInternalIP), "address": ep.Address},
		},
		"daemonEndpoints": map[string]any{"kubeletEndpoint": map[string]any{"Port": ep.Port}},
	}})
	if err != nil {
		return err
	}
	_, err = c.cfg.Client.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: c.cfg.FieldManager}, "status")
	if apierrors.IsNotFound(err) {
		return nil // registration writes it
	}
	if err != nil {
		return fmt.Errorf("write kubelet endpoint of node %q: %w", node, err)
	}
	return nil
}
