// Package controllers is the Kubernetes side of edgesync: it composes the
// pod, device, node and Service controllers into the one feed.Controllers the sync
// server uses. One set of shared informer caches serves every edge node, so
// connecting a node costs no API-server call; writes from edge reports go
// through the configured client and respect its QPS and burst, except node
// Lease renewals, which have a client of their own (LeaseQPS, LeaseBurst)
// so that neither kind of write can starve the other. The autonomy
// controller keeps the pods of edge nodes that go offline bound to them
// (see package autonomy); it is the only writer of pod specs.
//
// Wiring:
//
//	ctrls, err := controllers.New(controllers.Config{RESTConfig: cfg, Logger: log})
//	srv, err := server.New(opts)
//	go ctrls.Run(ctx, srv)        // informers, workers; returns when ctx ends
//	err = srv.Serve(ctx, lis, ctrls)
//
// Dependencies run one way: the controllers are built without the server
// and are handed it, as the feed.Publisher their workers publish through,
// when they run. Until the caches have synced (Synced), Desired and
// reports are answered UNAVAILABLE.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/edgesync/edgesync/controllers/autonomy"
	"github.com/edgesync/edgesync/controllers/devicesync"
	"github.com/edgesync/edgesync/controllers/dynamicsync"
	"github.com/edgesync/edgesync/controllers/eventsync"
	"github.com/edgesync/edgesync/controllers/internal/reportqueue"
	"github.com/edgesync/edgesync/controllers/leasekeeper"
	"github.com/edgesync/edgesync/controllers/nodestatus"
	"github.com/edgesync/edgesync/controllers/nodesync"
	"github.com/edgesync/edgesync/controllers/ownership"
	"github.com/edgesync/edgesync/controllers/podsync"
	"github.com/edgesync/edgesync/controllers/router"
	"github.com/edgesync/edgesync/controllers/servicesync"
	"github.com/edgesync/edgesync/controllers/tokensync"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// DefaultEdgeLabel marks edge nodes, as in KubeEdge.
const DefaultEdgeLabel = "node-role.kubernetes.io/edge"

// DefaultFieldManager names edgesync's writes to the API server.
const DefaultFieldManager = "edgesync"

// DefaultQPS and DefaultBurst bound the requests of Client: every write
// reports cause but Lease renewals, Events and token requests, which have
// clients of their own. edgesync-server's kubernetes.qps and
// kubernetes.burst default to them.
const (
	DefaultQPS   = 50
	DefaultBurst = 100
)

// Node Lease defaults. Kubernetes' node lifecycle controller marks a node
// Unknown when it has not seen its Lease renewed for its grace period
// (--node-monitor-grace-period: 40 s before Kubernetes 1.32, 50 s since),
// checked every --node-monitor-period (5 s); kubelets write a Lease
// duration of 40 s and renew every 10 s. edgesync renews a node's Lease
// only when a heartbeat shows the node alive, at the first heartbeat at
// least nine tenths of DefaultLeaseRenewInterval after the previous
// renewal. With the server's default heartbeats every 15 s
// (server.DefaultHeartbeatInterval) that is every heartbeat: a renewal
// every 15 s, and a late or lost heartbeat leaves the Lease 30 s old, plus
// the write's queueing and the controller's 5 s period still inside 40 s.
// Renewing every other heartbeat (30 s) would let one lost heartbeat
// (45 s) lapse the Lease; so 15 s is the longest cadence the Lease allows
// at 15 s heartbeats. At faster heartbeats the same interval keeps writes
// at one per 15-20 s instead of one per heartbeat (10 s heartbeats: every
// other one, 20 s, and a lost one leaves 30 s).
//
// DefaultLeaseQPS and DefaultLeaseBurst bound the renewals: the server's
// default node limit (10,000) renewing every 15 s writes 667 Leases per
// second; 1,000 leaves half again for catching up after the API server
// stalled (the queue coalesces per node, so a 10 s stall is made up within
// 20 s).
const (
	DefaultLeaseDuration      = 40 * time.Second
	DefaultLeaseRenewInterval = 15 * time.Second
	DefaultLeaseQPS           = 1000
	DefaultLeaseBurst         = 2000
)

// Config configures the controllers. Zero values take the defaults given.
type Config struct {
	// RESTConfig builds Client, Dynamic and LeaseClient when they are nil.
	// Its QPS and Burst bound the writes reports cause, except Lease
	// renewals.
	RESTConfig *rest.Config
	// Client and Dynamic talk to the API server; built from RESTConfig
	// when nil.
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// LeaseClient renews node Leases; when nil it is built from RESTConfig
	// with LeaseQPS and LeaseBurst instead of RESTConfig's QPS and Burst
	// (Client when RESTConfig is nil too).
	LeaseClient kubernetes.Interface
	// LeaseQPS and LeaseBurst bound the Lease writes: a replica holding N
	// nodes writes about N / LeaseRenewInterval per second (N / the
	// heartbeat interval when heartbeats are rarer), which must stay below
	// LeaseQPS. DefaultLeaseQPS and DefaultLeaseBurst when zero.
	LeaseQPS   float32
	LeaseBurst int
	// EdgeLabel is the label key that marks edge nodes (any value);
	// DefaultEdgeLabel when empty.
	EdgeLabel string
	// FieldManager names the writes; DefaultFieldManager when empty.
	FieldManager string
	// LeaseDuration is written into node Leases; DefaultLeaseDuration when
	// zero.
	LeaseDuration time.Duration
	// LeaseRenewInterval is how often a node's Lease is renewed while it
	// sends heartbeats; DefaultLeaseRenewInterval when zero (with a
	// LeaseDuration of its own: three eighths of it). It must be less than
	// LeaseDuration/2.
	LeaseRenewInterval time.Duration
	// LeaseWorkers is the number of goroutines renewing Leases; when zero,
	// LeaseQPS/20 (enough while a write takes up to 50ms), at least 16.
	LeaseWorkers int
	// Registerer registers the controllers' metrics (edgesync_lease_*);
	// none when nil.
	Registerer prometheus.Registerer
	// Workers is the number of workers per controller queue; 4 when zero.
	Workers int
	// ResyncPeriod of the informers; none when zero.
	ResyncPeriod time.Duration
	// TokenClient requests pods' ServiceAccount tokens; when nil it is
	// built from RESTConfig with TokenQPS and TokenBurst (default 50 and
	// 100), so that a reconnecting crowd of nodes cannot starve status
	// writes (Client when RESTConfig is nil too).
	TokenClient kubernetes.Interface
	TokenQPS    float32
	TokenBurst  int
	// EventClient writes the events edges report; when nil it is built
	// from RESTConfig with EventQPS and EventBurst (default 20 and 50),
	// so that a flood of events cannot delay status writes.
	EventClient kubernetes.Interface
	EventQPS    float32
	EventBurst  int
	// NodeEventRate and NodeEventBurst bound each node's events (see
	// package eventsync); eventsync's defaults when zero.
	NodeEventRate  float64
	NodeEventBurst int
	// Clock schedules token refreshes; the real clock when nil.
	Clock clock.WithTicker
	// KubeletEndpoint, when its Address is set, is written into the status
	// of every edge node this replica writes, so that the kube-apiserver
	// sends kubectl logs/exec/port-forward for them here (package
	// server/kubeletapi).
	KubeletEndpoint nodestatus.KubeletEndpoint
	// Ownership, when its Namespace is set, has this replica claim each
	// node before serving it (package ownership), so that with several
	// replicas only one writes a node's Lease and status. Required when more
	// than one replica serves a cluster.
	Ownership OwnershipConfig
	// DisableDevices turns the device controller off, for clusters
	// without the devices.kubeedge.io CRDs.
	DisableDevices bool
	// Subscriptions configures the resources edge applications subscribe
	// to (package dynamicsync); off when neither Dynamic nor RESTConfig
	// is set.
	Subscriptions SubscriptionsConfig
	// Router turns on KubeEdge's router (package router: Rules and
	// RuleEndpoints, which need the rules.kubeedge.io CRDs) with these
	// options; nil leaves it off. Serve Controllers.Router().Handler() on
	// the REST port.
	Router *router.Options
	Logger *zap.Logger
}

// SubscriptionsConfig bounds what edges subscribe to (package
// dynamicsync); zero values take its defaults.
type SubscriptionsConfig struct {
	// MaxPerNode bounds each node's subscriptions, MaxObjectsPerNode the
	// objects they cover.
	MaxPerNode        int
	MaxObjectsPerNode int
	// IdleTimeout keeps a resource's informer running this long after the
	// last subscription to it ended; negative stops it at once.
	IdleTimeout time.Duration
}

// OwnershipConfig configures node ownership between replicas (package
// ownership).
type OwnershipConfig struct {
	// Namespace holds the ownership Leases (the server's namespace); empty
	// turns ownership off (a single replica).
	Namespace string
	// Replica is this replica's id (the server id); Address is where other
	// replicas and operators reach it, recorded on its replica Lease.
	Replica string
	Address string
	// RouterAddress is where other replicas forward router REST calls
	// for this replica's nodes (host:port), recorded on its replica Lease.
	RouterAddress string
	// LeaseDuration of the replica Lease: how long the nodes of a replica
	// that died wait before another may serve them. 15s when zero.
	LeaseDuration time.Duration
	// QPS and Burst bound ownership writes (one per node that changes
	// replica; the replica Lease has a client of its own); 200 and 400
	// when zero: after a replica dies, the others take its nodes over at
	// this rate, and the nodes' reports wait for it. Faster is not better
	// on a busy API server: the failover benchmark saw a burst of 1,000
	// claims per survivor slow it past the survivors' own Lease renewals.
	QPS   float32
	Burst int
}

// Controllers implements feed.Controllers over informer caches.
type Controllers struct {
	cfg       Config
	log       *zap.Logger
	informers []cache.SharedIndexInformer
	synced    chan struct{} // closed once every cache has synced
	started   atomic.Bool   // Run was called

	// pub receives what nodes should get; set by Run before anything
	// that publishes starts.
	pub feed.Publisher

	pods    *podsync.Controller
	devices *devicesync.Controller // nil when disabled
	nodes   *nodestatus.Controller
	nodeObj *nodesync.Controller
	// services sends Services meant for edges and their EndpointSlices.
	services *servicesync.Controller
	// autonomy keeps pods on edge nodes that go offline.
	autonomy *autonomy.Controller
	// tokens obtains pods' ServiceAccount tokens.
	tokens *tokensync.Controller
	// events writes the events edges report.
	events *eventsync.Controller
	// owners decides which replica owns each node; nil with one replica.
	owners *ownership.Manager
	// keeper renews the node Leases of silent replicas' nodes; nil with
	// one replica.
	keeper *leasekeeper.Keeper
	// dynamic serves the resources edges subscribe to; nil when off.
	dynamic *dynamicsync.Controller
	// router routes KubeEdge Rules' messages; nil when off.
	router *router.Router
}

var (
	_ feed.Controllers = (*Controllers)(nil)
	_ feed.Admitter    = (*Controllers)(nil)
	_ feed.Claimer     = (*Controllers)(nil)
	_ feed.Adopter     = (*Controllers)(nil)
	_ feed.Directory   = (*Controllers)(nil)
	_ feed.Subscriber  = (*Controllers)(nil)
)

// New builds the controllers and their informers; nothing talks to the API
// server before Run.
func New(cfg Config) (*Controllers, error) {
	if cfg.EdgeLabel == "" {
		cfg.EdgeLabel = DefaultEdgeLabel
	}
	if cfg.FieldManager == "" {
		cfg.FieldManager = DefaultFieldManager
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if errs := validation.IsQualifiedName(cfg.EdgeLabel); len(errs) > 0 {
		return nil, fmt.Errorf("controllers: edge label %q is not a label key: %s", cfg.EdgeLabel, strings.Join(errs, "; "))
	}
	if cfg.Client == nil || (cfg.Dynamic == nil && (!cfg.DisableDevices || cfg.Router != nil)) {
		if cfg.RESTConfig == nil {
			return nil, errors.New("controllers: RESTConfig is required unless Client and Dynamic are given")
		}
	}
	var err error
	if cfg.Client == nil {
		if cfg.Client, err = kubernetes.NewForConfig(builtinKinds(cfg.RESTConfig)); err != nil {
			return nil, fmt.Errorf("controllers: kubernetes client: %w", err)
		}
	}
	if cfg.LeaseQPS <= 0 {
		cfg.LeaseQPS = DefaultLeaseQPS
	}
	if cfg.LeaseBurst <= 0 {
		cfg.LeaseBurst = DefaultLeaseBurst
	}
	if cfg.LeaseWorkers <= 0 {
		// Enough writers to use LeaseQPS while a write takes up to 50ms.
		cfg.LeaseWorkers = max(16, int(cfg.LeaseQPS/20))
	}
	if cfg.LeaseClient == nil && cfg.RESTConfig != nil {
		// No client-side limiter: nodestatus limits renewals to LeaseQPS
		// itself, before each write. client-go's limiter would build each
		// request's URL template once more just for a metric.
		leaseConfig := builtinKinds(cfg.RESTConfig)
		leaseConfig.QPS, leaseConfig.Burst, leaseConfig.RateLimiter = -1, 0, nil
		if cfg.LeaseClient, err = kubernetes.NewForConfig(leaseConfig); err != nil {
			return nil, fmt.Errorf("controllers: kubernetes lease client: %w", err)
		}
	}
	if cfg.TokenClient, err = budgetClient(cfg.TokenClient, cfg.RESTConfig, cfg.Client, cfg.TokenQPS, cfg.TokenBurst, 50, 100); err != nil {
		return nil, fmt.Errorf("controllers: kubernetes token client: %w", err)
	}
	if cfg.EventClient, err = budgetClient(cfg.EventClient, cfg.RESTConfig, cfg.Client, cfg.EventQPS, cfg.EventBurst, 20, 50); err != nil {
		return nil, fmt.Errorf("controllers: kubernetes event client: %w", err)
	}
	if cfg.Dynamic == nil && cfg.RESTConfig != nil {
		if cfg.Dynamic, err = dynamic.NewForConfig(cfg.RESTConfig); err != nil {
			return nil, fmt.Errorf("controllers: dynamic client: %w", err)
		}
	}

	c := &Controllers{cfg: cfg, log: cfg.Logger, synced: make(chan struct{})}
	label := cfg.EdgeLabel
	isEdge := func(n *corev1.Node) bool { _, ok := n.Labels[label]; return ok }

	// Every Node, so that an edge certificate naming a cloud kubelet's
	// Node is refused from the cache; those are kept small (slimNode).
	nodes := coreinformers.NewNodeInformer(cfg.Client, cfg.ResyncPeriod, cache.Indexers{})
	pods := coreinformers.NewFilteredPodInformer(cfg.Client, metav1.NamespaceAll, cfg.ResyncPeriod, cache.Indexers{},
		func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermNotEqualSelector("spec.nodeName", "").String()
		})
	configMaps := coreinformers.NewConfigMapInformer(cfg.Client, metav1.NamespaceAll, cfg.ResyncPeriod, cache.Indexers{})
	secrets := coreinformers.NewSecretInformer(cfg.Client, metav1.NamespaceAll, cfg.ResyncPeriod, cache.Indexers{})
	if err := podsync.AddIndexers(pods); err != nil {
		return nil, fmt.Errorf("controllers: %w", err)
	}
	c.informers = append(c.informers, nodes, pods, configMaps, secrets)

	// With several replicas, a write for a node is made only while this
	// replica owns it, and a handover waits for the writes under way.
	var guard reportqueue.Guard
	if cfg.Ownership.Namespace != "" {
		guard = c.beginWrite
	}
	if c.pods, err = podsync.New(podsync.Config{
		Client: cfg.Client, Pods: pods, ConfigMaps: configMaps, Secrets: secrets, Nodes: nodes, IsEdge: isEdge,
		FieldManager: cfg.FieldManager, WriteGuard: guard, Logger: cfg.Logger.Named("podsync"),
	}); err != nil {
		return nil, err
	}
	if c.nodeObj, err = nodesync.New(nodesync.Config{
		Nodes: nodes, IsEdge: isEdge, Logger: cfg.Logger.Named("nodesync"),
	}); err != nil {
		return nil, err
	}
	services := coreinformers.NewServiceInformer(cfg.Client, metav1.NamespaceAll, cfg.ResyncPeriod, cache.Indexers{})
	slices := discoveryinformers.NewEndpointSliceInformer(cfg.Client, metav1.NamespaceAll, cfg.ResyncPeriod, cache.Indexers{})
	if err := servicesync.AddIndexers(slices); err != nil {
		return nil, fmt.Errorf("controllers: %w", err)
	}
	c.informers = append(c.informers, services, slices)
	if c.services, err = servicesync.New(servicesync.Config{
		Services: services, EndpointSlices: slices, Nodes: nodes, IsEdge: isEdge, Logger: cfg.Logger.Named("servicesync"),
	}); err != nil {
		return nil, err
	}
	if c.nodes, err = nodestatus.New(nodestatus.Config{
		Client: cfg.Client, LeaseClient: cfg.LeaseClient, Nodes: corelisters.NewNodeLister(nodes.GetIndexer()), EdgeLabel: label,
		LeaseDuration: cfg.LeaseDuration, LeaseRenewInterval: cfg.LeaseRenewInterval, LeaseWorkers: cfg.LeaseWorkers,
		LeaseQPS: cfg.LeaseQPS, LeaseBurst: cfg.LeaseBurst,
		Registerer: cfg.Registerer, FieldManager: cfg.FieldManager, Logger: cfg.Logger.Named("nodestatus"),
		KubeletEndpoint: cfg.KubeletEndpoint, WriteGuard: guard,
	}); err != nil {
		return nil, fmt.Errorf("controllers: %w", err)
	}
	if c.autonomy, err = autonomy.New(autonomy.Config{
		Client: cfg.Client, Pods: pods, NodeIndex: podsync.NodeIndex, Nodes: nodes, IsEdge: isEdge,
		FieldManager: cfg.FieldManager, Logger: cfg.Logger.Named("autonomy"),
	}); err != nil {
		return nil, err
	}
	if c.tokens, err = tokensync.New(tokensync.Config{
		Client: cfg.TokenClient, Pods: pods, NodeIndex: podsync.NodeIndex, Nodes: nodes, IsEdge: isEdge,
		Registerer: cfg.Registerer, Clock: cfg.Clock, Logger: cfg.Logger.Named("tokensync"),
	}); err != nil {
		return nil, fmt.Errorf("controllers: %w", err)
	}
	if _, err := nodes.AddEventHandler(c.nodeLifecycle(isEdge)); err != nil {
		return nil, fmt.Errorf("controllers: %w", err)
	}
	var deviceIndex cache.Indexer
	if !cfg.DisableDevices {
		devices := dynamicinformer.NewFilteredDynamicInformer(cfg.Dynamic, devicesync.Devices, metav1.NamespaceAll, cfg.ResyncPeriod, cache.Indexers{}, nil).Informer()
		models := dynamicinformer.NewFilteredDynamicInformer(cfg.Dynamic, devicesync.DeviceModels, metav1.NamespaceAll, cfg.ResyncPeriod, cache.Indexers{}, nil).Informer()
		if err := devicesync.AddIndexers(devices); err != nil {
			return nil, fmt.Errorf("controllers: %w", err)
		}
		c.informers = append(c.informers, devices, models)
		deviceIndex = devices.GetIndexer()
		if c.devices, err = devicesync.New(devicesync.Config{
			Dynamic: cfg.Dynamic, Devices: devices, Models: models, Nodes: nodes, IsEdge: isEdge,
			FieldManager: cfg.FieldManager, WriteGuard: guard, Logger: cfg.Logger.Named("devicesync"),
		}); err != nil {
			return nil, err
		}
	}
	if cfg.Dynamic != nil {
		if c.dynamic, err = dynamicsync.New(dynamicsync.Config{
			Dynamic: cfg.Dynamic, Client: cfg.Client, Pods: pods, NodeIndex: podsync.NodeIndex, RESTConfig: cfg.RESTConfig,
			MaxSubscriptions: cfg.Subscriptions.MaxPerNode, MaxObjects: cfg.Subscriptions.MaxObjectsPerNode,
			IdleTimeout: cfg.Subscriptions.IdleTimeout, Registerer: cfg.Registerer, Logger: cfg.Logger.Named("dynamicsync"),
		}); err != nil {
			return nil, fmt.Errorf("controllers: %w", err)
		}
	}
	if o := cfg.Ownership; o.Namespace != "" {
		client, err := budgetClient(nil, cfg.RESTConfig, cfg.Client, o.QPS, o.Burst, 200, 400)
		if err != nil {
			return nil, fmt.Errorf("controllers: kubernetes ownership client: %w", err)
		}
		// The replica Lease is renewed through a client of its own: the
		// claims after a failover must never delay it.
		replicaClient, err := budgetClient(nil, cfg.RESTConfig, cfg.Client, 5, 10, 5, 10)
		if err != nil {
			return nil, fmt.Errorf("controllers: kubernetes replica Lease client: %w", err)
		}
		if c.owners, err = ownership.New(ownership.Config{
			Client: client, ReplicaClient: replicaClient, Namespace: o.Namespace, Replica: o.Replica, Address: o.Address, RouterAddress: o.RouterAddress,
			LeaseDuration: o.LeaseDuration, Logger: cfg.Logger.Named("ownership"),
		}); err != nil {
			return nil, fmt.Errorf("controllers: %w", err)
		}
		leaseClient := cfg.LeaseClient
		if leaseClient == nil {
			leaseClient = cfg.Client
		}
		if c.keeper, err = leasekeeper.New(leasekeeper.Config{
			Orphans: c.owners.Orphans, Nodes: corelisters.NewNodeLister(nodes.GetIndexer()), EdgeLabel: label,
			LeaseClient: leaseClient, LeaseDuration: cfg.LeaseDuration, RenewInterval: cfg.LeaseRenewInterval,
			FieldManager: cfg.FieldManager, Registerer: cfg.Registerer, Logger: cfg.Logger.Named("leasekeeper"),
		}); err != nil {
			return nil, fmt.Errorf("controllers: %w", err)
		}
	}
	if cfg.Router != nil {
		if err := c.newRouter(cfg); err != nil {
			return nil, err
		}
	}
	if c.events, err = eventsync.New(eventsync.Config{
		Client: cfg.EventClient, Pods: corelisters.NewPodLister(pods.GetIndexer()), Devices: deviceIndex,
		Rate: cfg.NodeEventRate, Burst: cfg.NodeEventBurst, Registerer: cfg.Registerer, Logger: cfg.Logger.Named("eventsync"),
	}); err != nil {
		return nil, fmt.Errorf("controllers: %w", err)
	}
	for _, inf := range c.informers {
		// Edges never need managed fields; dropping them before the cache
		// stores an object saves memory and an encode-time copy.
		transform := dropManagedFields
		if inf == nodes {
			transform = slimNode(isEdge)
		}
		if err := inf.SetTransform(transform); err != nil {
			return nil, fmt.Errorf("controllers: %w", err)
		}
	}
	return c, nil
}

// budgetClient returns client, or when it is nil a client built from
// restConfig with a rate limit of its own (qps and burst, or defQPS and
// defBurst when those are zero), or fallback when restConfig is nil.
func budgetClient(client kubernetes.Interface, restConfig *rest.Config, fallback kubernetes.Interface, qps float32, burst int, defQPS float32, defBurst int) (kubernetes.Interface, error) {
	switch {
	case client != nil:
		return client, nil
	case restConfig == nil:
		return fallback, nil
	}
	if qps <= 0 {
		qps = defQPS
	}
	if burst <= 0 {
		burst = defBurst
	}
	own := builtinKinds(restConfig)
	own.QPS, own.Burst, own.RateLimiter = qps, burst, nil
	return kubernetes.NewForConfig(own)
}

// builtinKinds is a copy of restConfig for clients of Kubernetes' built-in
// kinds: protobuf both ways, as Kubernetes' own controllers talk, which
// costs the API server and edgesync less CPU per list, watch event and
// write than JSON. Custom resources (the dynamic client) stay JSON: the API
// server serves them in JSON only.
func builtinKinds(restConfig *rest.Config) *rest.Config {
	c := rest.CopyConfig(restConfig)
	c.ContentType = runtime.ContentTypeProtobuf
	c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return c
}

// EndSession ends node's session when the publisher holds sessions
// (feed.SessionEnder); the ownership manager ends sessions through it.
func (c *Controllers) EndSession(node string, reason error) {
	if e, ok := c.pub.(feed.SessionEnder); ok {
		e.EndSession(node, reason)
	}
}

// nodeLifecycle returns the Node event handlers that end a node's session
// when its Node is deleted (FAILED_PRECONDITION: it may register again) or
// is not, or no longer, an edge node (PERMISSION_DENIED), and wake
// registrations waiting for their Node. A session admitted while its Node
// did not exist yet and whose Node is deleted before the session
// registers is not ended: its reports are refused NOT_FOUND, as before
// the node registered.
func (c *Controllers) nodeLifecycle(isEdge func(*corev1.Node) bool) cache.ResourceEventHandlerFuncs {
	notEdge := func(n *corev1.Node) {
		c.nodes.NodeDeleted(n.Name)
		c.EndSession(n.Name, c.nodes.NotEdge(n.Name))
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			n, ok := obj.(*corev1.Node)
			switch {
			case !ok:
			case isEdge(n):
				c.nodes.NodeChanged(n.Name)
			default:
				notEdge(n)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			n, ok2 := newObj.(*corev1.Node)
			switch {
			case !ok1 || !ok2:
			case isEdge(n):
				c.nodes.NodeChanged(n.Name)
			case isEdge(o):
				notEdge(n)
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			n, ok := obj.(*corev1.Node)
			if !ok || !isEdge(n) {
				return
			}
			c.nodes.NodeDeleted(n.Name)
			if c.owners != nil {
				c.owners.NodeDeleted(n.Name)
			}
			c.EndSession(n.Name, feed.Errorf(feed.ErrFailedPrecondition,
				"Node %q was deleted; send NodeRegistration to register it again (until then the node's reports are refused NOT_FOUND)", n.Name))
		},
	}
}

// slimNode keeps of a Node that is not an edge node only what tells that it
// exists and is not one (name, uid, labels): a cloud cluster's Nodes cost
// the cache little, whatever their status holds.
func slimNode(isEdge func(*corev1.Node) bool) cache.TransformFunc {
	return func(obj any) (any, error) {
		n, ok := obj.(*corev1.Node)
		if !ok || isEdge(n) {
			return dropManagedFields(obj)
		}
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels,
		}}, nil
	}
}

func dropManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// Run starts the informers, waits for their caches, runs the controllers'
// workers, which publish through pub (the server; a feed.SessionEnder too
// when it holds sessions), until ctx ends, and returns once everything it
// started has stopped. It returns an error only when ctx ended before the
// caches synced.
func (c *Controllers) Run(ctx context.Context, pub feed.Publisher) error {
	if pub == nil {
		return errors.New("controllers: Run needs a publisher")
	}
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("controllers: Run called twice")
	}
	// Before any informer or worker starts: they read it without a lock.
	c.pub = pub
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, inf := range c.informers {
		wg.Go(func() { inf.Run(ctx.Done()) })
	}
	synced := make([]cache.InformerSynced, 0, len(c.informers))
	for _, inf := range c.informers {
		synced = append(synced, inf.HasSynced)
	}
	wg.Go(func() {
		if !cache.WaitForCacheSync(ctx.Done(), synced...) {
			return
		}
		if c.owners != nil {
			select {
			case <-c.owners.Ready():
			case <-ctx.Done():
				return
			}
		}
		c.log.Info("informer caches synced")
		close(c.synced)
	})

	errs := make(chan error, 9) // at least one slot per controller below
	if c.owners != nil {
		wg.Go(func() { c.owners.Run(ctx, c) })
		wg.Go(func() {
			select {
			case <-c.synced: // the Nodes' cache answers whether a node is Ready
				c.keeper.Run(ctx)
			case <-ctx.Done():
			}
		})
	}
	wg.Go(func() { c.nodes.Run(ctx, c.cfg.Workers) })
	wg.Go(func() { c.autonomy.Run(ctx, c.cfg.Workers) })
	wg.Go(func() { c.events.Run(ctx, c.cfg.Workers) })
	wg.Go(func() { errs <- c.nodeObj.Run(ctx, pub, c.cfg.Workers) })
	wg.Go(func() { errs <- c.pods.Run(ctx, pub, c.cfg.Workers) })
	wg.Go(func() { errs <- c.tokens.Run(ctx, pub, c.cfg.Workers) })
	wg.Go(func() { errs <- c.services.Run(ctx, pub, c.cfg.Workers) })
	if c.devices != nil {
		wg.Go(func() { errs <- c.devices.Run(ctx, pub, c.cfg.Workers) })
	}
	if c.dynamic != nil {
		wg.Go(func() { errs <- c.dynamic.Run(ctx, pub, c.cfg.Workers) })
	}
	if c.router != nil {
		wg.Go(func() { c.router.Run(ctx) })
	}
	<-ctx.Done()
	cancel()
	wg.Wait()
	close(errs)
	var err error
	for e := range errs {
		err = errors.Join(err, e)
	}
	return err
}

// Synced is closed once every informer cache has synced; Desired answers
// UNAVAILABLE before.
func (c *Controllers) Synced() <-chan struct{} { return c.synced }

// Desired returns every object node should hold, from the caches.
func (c *Controllers) Desired(node string) ([]*feed.Object, error) {
	select {
	case <-c.synced:
	default:
		return nil, feed.NewError(feed.ErrUnavailable, "the server's caches are still loading; connect again shortly")
	}
	// The Node first: an agent knows its labels and taints before its pods.
	objs, err := c.nodeObj.Desired(node)
	if err != nil {
		return nil, err
	}
	pods, err := c.pods.Desired(node)
	if err != nil {
		return nil, err
	}
	objs = append(objs, pods...)
	tokens, err := c.tokens.Desired(node)
	if err != nil {
		return nil, err
	}
	objs = append(objs, tokens...)
	services, err := c.services.Desired(node)
	if err != nil {
		return nil, err
	}
	objs = append(objs, services...)
	if c.devices != nil {
		devs, err := c.devices.Desired(node)
		if err != nil {
			return nil, err
		}
		objs = append(objs, devs...)
	}
	if c.dynamic != nil {
		subs, err := c.dynamic.Desired(node)
		if err != nil {
			return nil, err
		}
		objs = append(objs, subs...)
	}
	return objs, nil
}

// Tombstone returns the DELETE event for an object a node should not hold.
func (c *Controllers) Tombstone(key feed.Key, uid string) (*feed.Object, error) {
	switch key.Kind {
	case edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN:
		return c.tokens.Tombstone(key, uid)
	case edgesyncv1.Kind_KIND_RESOURCE, edgesyncv1.Kind_KIND_SUBSCRIPTION:
		if c.dynamic != nil {
			return c.dynamic.Tombstone(key, uid)
		}
	}
	return feed.Tombstone(key, uid)
}

// HandleReport routes a report to the controller that writes it. Reports
// that arrive before the caches have synced are answered UNAVAILABLE: the
// checks that guard them (which node a pod is bound to) read the caches.
func (c *Controllers) HandleReport(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	select {
	case <-c.synced:
	default:
		answer(reportqueue.Result(req.GetRequestId(), feed.NewError(feed.ErrUnavailable, "the server's caches are still loading; send the report again shortly")))
		return
	}
	// A node this replica serves but whose writes it holds (its replica
	// Lease is late) has its reports queued: they are written once the
	// hold ends, or refused if another replica took the node meanwhile.
	if c.owners != nil && !c.owners.Serves(node) {
		answer(reportqueue.Result(req.GetRequestId(), feed.Errorf(feed.ErrUnavailable,
			"server %s no longer serves node %q (another replica took it over); connect again", c.cfg.Ownership.Replica, node)))
		return
	}
	switch req.GetMessage().(type) {
	case *edgesyncv1.SyncRequest_NodeRegistration, *edgesyncv1.SyncRequest_NodeStatus, *edgesyncv1.SyncRequest_Heartbeat:
		c.nodes.HandleReport(node, req, answer)
	case *edgesyncv1.SyncRequest_PodStatus:
		c.pods.HandleReport(node, req, answer)
	case *edgesyncv1.SyncRequest_EventReport:
		c.events.HandleReport(node, req, answer)
	case *edgesyncv1.SyncRequest_Subscriptions, *edgesyncv1.SyncRequest_ResourceWrite:
		if c.dynamic == nil {
			answer(reportqueue.Result(req.GetRequestId(), feed.NewError(feed.ErrUnimplemented, "subscriptions are disabled on this server")))
			return
		}
		c.dynamic.HandleReport(node, req, answer)
	case *edgesyncv1.SyncRequest_RouteMessage:
		if c.router == nil {
			answer(reportqueue.Result(req.GetRequestId(), feed.NewError(feed.ErrUnimplemented, "message routing (Rules) is off on this server")))
			return
		}
		c.router.HandleReport(node, req, answer)
	case *edgesyncv1.SyncRequest_DeviceStatus:
		if c.devices == nil {
			answer(reportqueue.Result(req.GetRequestId(), feed.NewError(feed.ErrUnimplemented, "device support is disabled on this server")))
			return
		}
		c.devices.HandleReport(node, req, answer)
	default:
		answer(reportqueue.Result(req.GetRequestId(), feed.Errorf(feed.ErrInvalid, "%T is not a report", req.GetMessage())))
	}
}

// Adopt keeps the ServiceAccount tokens a connecting node holds that this
// replica did not obtain, until they are due (feed.Adopter), instead of
// requesting them again.
func (c *Controllers) Adopt(node string, held []*edgesyncv1.ObjectRef) {
	c.tokens.Adopt(node, held)
	if c.dynamic != nil {
		c.dynamic.Adopt(node, held)
	}
}

// Subscribe takes the subscriptions of a connecting node's Hello
// (feed.Subscriber; package dynamicsync).
func (c *Controllers) Subscribe(node string, subs []*edgesyncv1.Subscription) {
	if c.dynamic != nil {
		c.dynamic.Subscribe(node, subs)
	}
}

// Dynamic returns the controller serving subscriptions, nil when off.
func (c *Controllers) Dynamic() *dynamicsync.Controller { return c.dynamic }

// Admit refuses a session to a node whose Node is not an edge node
// (feed.Admitter), from the cache; a node with no Node yet is admitted so
// that it can register.
func (c *Controllers) Admit(node string) error {
	select {
	case <-c.synced:
	default:
		return feed.NewError(feed.ErrUnavailable, "the server's caches are still loading; connect again shortly")
	}
	return c.nodes.Admit(node)
}

// Claim makes this replica node's owner before the server serves it
// (feed.Claimer; ownership off, every replica may), then has this
// replica's kubelet endpoint written into the Node, where the
// kube-apiserver looks for the node's kubelet (Config.KubeletEndpoint).
func (c *Controllers) Claim(ctx context.Context, node string) error {
	if c.owners != nil {
		if err := c.owners.Claim(ctx, node); err != nil {
			return err
		}
	}
	c.nodes.SessionStarted(node)
	if c.router != nil {
		c.router.SessionStarted(node)
	}
	return nil
}

// beginWrite admits a write for node while this replica owns it
// (reportqueue.Guard; set only with ownership on).
func (c *Controllers) beginWrite(ctx context.Context, node string) (func(), error) {
	return c.owners.BeginWrite(ctx, node)
}

// Owner returns the replica owning node: the one holding its session and
// writing for it. Without ownership (one replica) it reports false. Tunnel
// routing and operators' tools use it to reach a node's replica, and
// OwnerAddress to dial it.
func (c *Controllers) Owner(node string) (replica string, ok bool) {
	if c.owners == nil {
		return "", false
	}
	return c.owners.Owner(node)
}

// OwnerAddress returns the address replica recorded (OwnershipConfig.Address).
func (c *Controllers) OwnerAddress(replica string) (string, bool) {
	if c.owners == nil {
		return "", false
	}
	return c.owners.Address(replica)
}

// Owners returns every owned node's replica (feed.Directory); nil without
// ownership.
func (c *Controllers) Owners() map[string]string {
	if c.owners == nil {
		return nil
	}
	return c.owners.Owners()
}

// Release takes node from its owner, which ends its session
// (feed.Directory).
func (c *Controllers) Release(ctx context.Context, node, reason string) error {
	if c.owners == nil {
		return errors.New("node ownership is off")
	}
	return c.owners.Release(ctx, node, reason)
}

// SessionEnded stops per-node work for node (its Lease renewals).
func (c *Controllers) SessionEnded(node string) {
	c.nodes.SessionEnded(node)
	c.tokens.SessionEnded(node)
	c.events.SessionEnded(node)
	if c.dynamic != nil {
		c.dynamic.SessionEnded(node)
	}
	if c.router != nil {
		c.router.SessionEnded(node)
	}
}
