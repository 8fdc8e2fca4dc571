// Package edgeclient is the library edge agents build on. A Client holds one
// node's SyncService stream to the edgesync server (reconnecting forever
// with jittered exponential backoff), keeps every object the node holds in a
// local store so that the node works offline and resumes with only the
// difference, delivers typed events (k8s.io/api/core/v1 Pods, ConfigMaps and
// Secrets, Devices, and the pods' ServiceAccount tokens) to the agent, and
// carries the agent's reports (node registration and status, heartbeats,
// pod and device status) until the server answers them, and its events
// (ReportEvent: buffered while offline, never blocking). A node whose
// certificates an operator revoked deletes the Secrets and ServiceAccount
// tokens it holds (IsRevoked, State.Revoked).
// Requests that start in the cloud (kubectl logs, exec, attach,
// port-forward) reach the node through tunnels the client opens when the
// server asks, served by the agent's Config.TunnelHandler.
//
// The protocol it speaks is documented in api/edgesync/v1/sync.proto.
//
// A typical agent:
//
//	c, err := edgeclient.New(cfg) // cfg.OnEvent handles changes
//	defer c.Close()
//	pods, _ := c.Pods()          // what the node held when it last ran
//	c.RegisterNode(reg)
//	err = c.Run(ctx)             // until ctx ends
package edgeclient

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/edgeclient/backoff"
	"github.com/edgesync/edgesync/edgeclient/endpoints"
	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Config says where the server is, who the node is and where it keeps what
// it holds.
type Config struct {
	// Server is the server address, host:port. A name may resolve to
	// several replicas: each of its addresses is a candidate.
	Server string
	// Servers are more addresses of the same deployment (host:port), for
	// edges that know its replicas one by one. The first connection goes
	// to one of Server and Servers at random, so that edges spread; after
	// a failed attempt the next goes to another (package endpoints).
	Servers []string
	// CAFile is the PEM file of the CA that signed the server certificate.
	CAFile string
	// CertFile and KeyFile hold the node's client certificate (CN
	// "system:node:<NodeName>") and key. They are read again when they
	// change, so rotating them needs no restart.
	CertFile string
	KeyFile  string
	// NodeName is the node's name, as in its certificate.
	NodeName string
	// RenewCertificates makes Run renew the certificate at a random point
	// between 70 % and 90 % of its lifetime, over the live connection, and
	// replace CertFile and KeyFile (which must be writable) atomically.
	// Join writes files for this.
	RenewCertificates bool

	// StoreDir is the directory of the persistent store. Either it or
	// Store must be set.
	StoreDir string
	// Store, when set, is used instead of opening StoreDir (for example
	// store.NewMemory() in a simulator). The Client does not close it.
	Store store.Store

	// Logger receives the client's logs; nil means no logging.
	Logger *zap.Logger
	// Backoff shapes the delays between connection attempts.
	Backoff backoff.Config
	// AgentVersion is shown to operators, e.g. "edgesync-agent/0.1.0".
	AgentVersion string

	// OnEvent, when set, is called for every change to what the node
	// holds, after the store has been updated and before the change is
	// acknowledged. It is called from one goroutine, in order. An error
	// makes the client Nack the object with the error's text; the object
	// stays in the store (it is what the cloud wants the node to hold).
	// OnEvent must not wait for a Report: results arrive on the goroutine
	// that calls it.
	OnEvent func(ctx context.Context, ev Event) error

	// TunnelHandler serves the kubelet API requests that reach the node
	// through tunnels (kubectl logs, exec, attach, port-forward; paths and
	// parameters in api/edgesync/v1/tunnel.proto), one request per
	// connection, on an in-memory listener. Requests that upgrade the
	// connection (SPDY, WebSocket) may hijack it. When nil, every such
	// request is answered 501 Not Implemented.
	TunnelHandler http.Handler

	// HeartbeatWhile, when set, gates the heartbeats the client sends by
	// itself (every interval, and after a registration): they are sent
	// only while it returns true. An agent whose node has a liveness of
	// its own (a kubelet renewing its Lease through package localapi,
	// which calls Heartbeat) sets it so that the node's Lease lapses when
	// that liveness stops, as in any cluster. Heartbeat is not gated.
	HeartbeatWhile func() bool
	// Router takes the messages KubeEdge Rules route to applications on the
	// node (MQTT, HTTP); package edgeclient/router is one. When nil,
	// deliveries are answered with an error.
	Router RouteHandler

	// LivenessTimeout ends a stream on which nothing has arrived for this
	// long (heartbeats are answered, so a live stream is never silent for
	// long). Zero means four heartbeat intervals, at least a minute.
	// Broken links are noticed sooner, by keepalive pings (every 30s,
	// 10s timeout; DialOptions may set others).
	LivenessTimeout time.Duration
	// AckDelay is how long the client may hold back an acknowledgement
	// after applying an object event, so that a trickle of events is
	// covered by one cumulative Ack rather than one each (fewer messages
	// for both sides). Half a window of unacknowledged events is
	// acknowledged at once, so the delay never stalls the server. Zero
	// means DefaultAckDelay.
	AckDelay time.Duration
	// EventBuffer is how many events ReportEvent keeps waiting while the
	// node is offline (the oldest are dropped beyond it); default
	// DefaultEventBuffer.
	EventBuffer int
	// NodeStatusReportFrequency is how long ReportNodeStatus may hold back
	// a node status equal to the last one sent: past it the status is sent
	// in full again, as the kubelet does every nodeStatusReportFrequency,
	// so that a Node the cloud changed behind the edge's back is repaired
	// even if no reconnect happened. Zero means
	// DefaultNodeStatusReportFrequency.
	NodeStatusReportFrequency time.Duration
	// MaxRecvMessageBytes bounds one message from the server; default 16 MiB.
	MaxRecvMessageBytes int
	// DialOptions are added to the client's own (for example keepalive).
	DialOptions []grpc.DialOption
}

// EventType says how an object held by the node changed.
type EventType int

const (
	// Added: the node holds an object it did not hold.
	Added EventType = iota + 1
	// Modified: the node holds a new version of an object.
	Modified
	// Deleted: the node no longer holds the object.
	Deleted
)

func (t EventType) String() string {
	switch t {
	case Added:
		return "ADDED"
	case Modified:
		return "MODIFIED"
	case Deleted:
		return "DELETED"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change to what the node holds, typed by its kind.
type Event struct {
	Type EventType
	Key  Key
	// UID and ResourceVersion of the new version; of the removed version
	// for Deleted.
	UID             string
	ResourceVersion string
	// Object is the new version; for Deleted the version that was held.
	Object Object
	// Old is the version held before a Modified event, else nil.
	Old *Object
	// Sequence is the stream sequence number of the message.
	Sequence uint64
}

// State is what an agent shows about its connection.
type State struct {
	// Connected is true while a stream is open and welcomed.
	Connected bool
	// Synced is true once the current stream finished its initial sync.
	Synced    bool
	SessionID string
	ServerID  string
	// ConnectedSince is when the current stream was welcomed.
	ConnectedSince time.Time
	// LastSync is when an initial sync last completed.
	LastSync time.Time
	// LastError is why the last stream or connection attempt ended.
	LastError string
	// Connections counts welcomed streams; Reconnects counts the attempts
	// made after a stream ended or an attempt failed.
	Connections uint64
	Reconnects  uint64
	// RetryDelay is the wait before the attempt after the last failure,
	// drawn by the backoff.
	RetryDelay time.Duration
	// ObjectsHeld counts the objects in the store.
	ObjectsHeld int
	// ObjectsReceived counts APPLY events received over all streams, and
	// DeletesReceived the DELETE events.
	ObjectsReceived uint64
	DeletesReceived uint64
	// Nacks counts objects the client refused.
	Nacks uint64
	// EventsDropped counts events ReportEvent dropped because the buffer
	// was full (oldest first); EventsRefused those the server refused
	// (for example over the node's event budget).
	EventsDropped uint64
	EventsRefused uint64
	// LastSyncSent and LastSyncDeleted are the counts the server gave in
	// the last SyncComplete.
	LastSyncSent    uint32
	LastSyncDeleted uint32
	// PendingReports counts reports not answered yet.
	PendingReports int
	// CertificateNotAfter is when the client certificate in use expires;
	// CertificateRenewals counts renewals (Config.RenewCertificates).
	CertificateNotAfter time.Time
	CertificateRenewals uint64
	// Revoked is true once the server said the node's certificates were
	// revoked (IsRevoked): the client then deleted the Secrets and
	// ServiceAccount tokens it held, and keeps dialing in case the node
	// joins again (new certificate files). A welcomed stream clears it.
	Revoked bool
}

// Errors Report.Wait returns when a report gets no answer.
var (
	// ErrSuperseded: a newer report about the same object replaced it.
	ErrSuperseded = errors.New("report superseded by a newer report for the same object")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("edge client closed")
)

// Client is one node's connection to the cloud. Its methods are safe for
// concurrent use.
type Client struct {
	cfg      Config
	log      *zap.Logger
	store    store.Store
	ownStore bool
	certs    *certLoader
	// endpoints chooses the replica to dial; only Run uses it.
	endpoints *endpoints.Set

	runMu sync.Mutex // held by Run, so that it runs once at a time

	mu         sync.Mutex // guards the fields below
	closed     bool
	state      State
	changed    chan struct{}      // closed and replaced on every state change
	reports    map[string]*Report // unanswered reports, latest per object
	byID       map[uint64]*Report // the same reports by request id
	lastID     uint64
	events     eventQueue         // events waiting for the server (events.go)
	wake       func()             // wakes the current stream's sender; nil when none
	conn       *grpc.ClientConn   // the current stream's connection; nil when none
	nodeStat   *corev1.NodeStatus // last reported node status, normalized
	nodeStatR  *Report            // its report
	nodeStatAt time.Time          // when it was submitted
	// podStats is the last status report of each pod, by report key; they
	// are sent again after a reconnect (restate.go).
	podStats map[string]*edgesyncv1.SyncRequest
	// syncs counts completed initial syncs, over all streams.
	syncs uint64
	// registration is the last NodeRegistration asked for, sent again when
	// the server says the Node does not exist.
	registration *edgesyncv1.NodeRegistration

	subs   subscriptions // the node's subscriptions (subscriptions.go)
	writes uint64        // numbers the keys of resource writes; guarded by mu
	// routeAnswers wait for the current stream's sender (routes.go).
	routeAnswers []*edgesyncv1.RouteResult
}

// New checks the configuration, loads the certificate and opens the store.
// It does not connect: the store is readable at once, and Run connects.
func New(cfg Config) (*Client, error) {
	switch {
	case cfg.Server == "" && len(cfg.Servers) == 0:
		return nil, errors.New("edgeclient: Server address is not set")
	case cfg.NodeName == "":
		return nil, errors.New("edgeclient: NodeName is not set")
	case cfg.CAFile == "" || cfg.CertFile == "" || cfg.KeyFile == "":
		return nil, errors.New("edgeclient: CAFile, CertFile and KeyFile must all be set (the server only accepts mutual TLS)")
	case cfg.StoreDir == "" && cfg.Store == nil:
		return nil, errors.New("edgeclient: set StoreDir (or Store for an in-memory store)")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.MaxRecvMessageBytes <= 0 {
		cfg.MaxRecvMessageBytes = 16 << 20
	}
	if cfg.AckDelay <= 0 {
		cfg.AckDelay = DefaultAckDelay
	}
	if cfg.NodeStatusReportFrequency <= 0 {
		cfg.NodeStatusReportFrequency = DefaultNodeStatusReportFrequency
	}
	c := &Client{
		cfg:      cfg,
		log:      cfg.Logger.With(zap.String("node", cfg.NodeName)),
		changed:  make(chan struct{}),
		reports:  make(map[string]*Report),
		byID:     make(map[uint64]*Report),
		podStats: make(map[string]*edgesyncv1.SyncRequest),
	}
	c.events.limit = cmp.Or(max(cfg.EventBuffer, 0), DefaultEventBuffer)
	if _, err := loadCAPool(cfg.CAFile); err != nil {
		return nil, fmt.Errorf("edgeclient: %w", err)
	}
	certs, err := newCertLoader(cfg.CertFile, cfg.KeyFile, c.log)
	if err != nil {
		return nil, fmt.Errorf("edgeclient: %w", err)
	}
	c.certs = certs
	addrs := cfg.Servers
	if cfg.Server != "" {
		addrs = append([]string{cfg.Server}, cfg.Servers...)
	}
	if c.endpoints, err = endpoints.New(addrs, nil); err != nil {
		return nil, fmt.Errorf("edgeclient: %w", err)
	}
	if cert, _ := certs.get(); cert != nil && cert.Leaf != nil {
		c.state.CertificateNotAfter = cert.Leaf.NotAfter
	}
	if cfg.Store != nil {
		c.store = cfg.Store
	} else {
		s, err := store.Open(cfg.StoreDir, store.Options{})
		if err != nil {
			return nil, fmt.Errorf("edgeclient: %w", err)
		}
		c.store, c.ownStore = s, true
	}
	c.state.ObjectsHeld = c.store.Len()
	return c, nil
}

// Close resolves every unanswered report with ErrClosed and closes the
// store the client opened. Call it after Run has returned.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	pending := c.byID
	c.reports, c.byID = map[string]*Report{}, map[uint64]*Report{}
	c.mu.Unlock()
	for _, r := range pending {
		r.resolve(nil, ErrClosed)
	}
	if c.ownStore {
		return c.store.Close()
	}
	return nil
}

// NodeName is the name of the node the client speaks for.
func (c *Client) NodeName() string { return c.cfg.NodeName }

// State returns a snapshot of the connection state and counters.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.state
	s.ObjectsHeld = c.store.Len()
	s.PendingReports = len(c.byID)
	return s
}

// StateChanged returns a channel closed at the next change of State, for
// an agent (or a test) that waits for, say, the next sync.
func (c *Client) StateChanged() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// updateState changes the state under the lock and wakes StateChanged
// waiters.
func (c *Client) updateState(fn func(*State)) {
	c.mu.Lock()
	fn(&c.state)
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// WaitFor waits until cond holds for the client's state, or ctx ends.
func (c *Client) WaitFor(ctx context.Context, cond func(State) bool) (State, error) {
	for {
		ch := c.StateChanged()
		s := c.State()
		if cond(s) {
			return s, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return s, ctx.Err()
		}
	}
}

// Get returns the object held under key, or ok false.
func (c *Client) Get(key Key) (obj Object, ok bool, err error) {
	r, err := c.store.Get(key)
	if err != nil || r == nil {
		return Object{}, false, err
	}
	obj, err = Decode(r)
	return obj, err == nil, err
}

// List returns the objects of kind held, ordered by namespace and name.
func (c *Client) List(kind edgesyncv1.Kind) ([]Object, error) {
	recs, err := c.store.List(kind)
	if err != nil {
		return nil, err
	}
	out := make([]Object, 0, len(recs))
	for _, r := range recs {
		obj, err := Decode(r)
		if err != nil {
			return nil, err
		}
		out = append(out, obj)
	}
	return out, nil
}

// Pods returns the pods the node holds.
func (c *Client) Pods() ([]*corev1.Pod, error) {
	return listOf(c, edgesyncv1.Kind_KIND_POD, func(o Object) *corev1.Pod { return o.Pod })
}

// ConfigMaps returns the configmaps the node holds.
func (c *Client) ConfigMaps() ([]*corev1.ConfigMap, error) {
	return listOf(c, edgesyncv1.Kind_KIND_CONFIG_MAP, func(o Object) *corev1.ConfigMap { return o.ConfigMap })
}

// Secrets returns the secrets the node holds.
func (c *Client) Secrets() ([]*corev1.Secret, error) {
	return listOf(c, edgesyncv1.Kind_KIND_SECRET, func(o Object) *corev1.Secret { return o.Secret })
}

// Devices returns the devices the node holds.
func (c *Client) Devices() ([]*Device, error) {
	return listOf(c, edgesyncv1.Kind_KIND_DEVICE, func(o Object) *Device { return o.Device })
}

// Pod returns a held pod, or nil.
func (c *Client) Pod(namespace, name string) (*corev1.Pod, error) {
	o, _, err := c.Get(Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: namespace, Name: name})
	return o.Pod, err
}

// ConfigMap returns a held configmap, or nil.
func (c *Client) ConfigMap(namespace, name string) (*corev1.ConfigMap, error) {
	o, _, err := c.Get(Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: namespace, Name: name})
	return o.ConfigMap, err
}

// Secret returns a held secret, or nil.
func (c *Client) Secret(namespace, name string) (*corev1.Secret, error) {
	o, _, err := c.Get(Key{Kind: edgesyncv1.Kind_KIND_SECRET, Namespace: namespace, Name: name})
	return o.Secret, err
}

// Device returns a held device, or nil.
func (c *Client) Device(namespace, name string) (*Device, error) {
	o, _, err := c.Get(Key{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: namespace, Name: name})
	return o.Device, err
}

// Node returns the node's own Node as the cloud last sent it (without its
// status, which the edge reports), or nil before it has arrived or after
// the Node was deleted.
func (c *Client) Node() (*corev1.Node, error) {
	o, _, err := c.Get(Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: c.cfg.NodeName})
	return o.Node, err
}

func listOf[T any](c *Client, kind edgesyncv1.Kind, pick func(Object) T) ([]T, error) {
	objs, err := c.List(kind)
	if err != nil {
		return nil, err
	}
	out := make([]T, len(objs))
	for i, o := range objs {
		out[i] = pick(o)
	}
	return out, nil
}
