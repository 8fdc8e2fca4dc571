// Package edgesim simulates a fleet of edge nodes for edgesync-bench. Each
// edge holds a real mutual-TLS connection with its own node certificate and
// speaks the edgesync protocol (Hello with what it holds, Welcome, initial
// sync, live events, cumulative acknowledgements, heartbeats) directly over
// a gRPC stream, keeping what it holds in memory. It is lean on purpose, so
// that the simulator, not the server, is what stays small on a shared
// machine: one receiving and one sending goroutine per stream, and object
// events read only as far as their identity and version (decode.go), as
// the raw baseline's client reads only its sequence.
package edgesim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/internal/bench/certs"
	"github.com/edgesync/edgesync/internal/bench/netx"
	"github.com/edgesync/edgesync/server/feed"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// SentAtKey is the ConfigMap data key in which the benchmark's publisher
// writes the time (Unix nanoseconds) at which an update was made; an edge
// that receives such a ConfigMap records the delivery latency.
const SentAtKey = "edgesync-bench.sent-at"

// Config configures a fleet.
type Config struct {
	// Addr is the server's host:port.
	Addr string
	// Addrs, when set, are the addresses of several replicas of one
	// deployment (Addr is then ignored). Edge i tries them in order from
	// i modulo their number, so that edges spread evenly, and when its
	// replica refuses it moves on to the next.
	Addrs []string
	Roots *x509.CertPool
	// Heartbeats makes every edge send Heartbeat on Welcome's interval.
	Heartbeats bool
	// ConnectConcurrency bounds how many edges are dialing at once during
	// Start (the ramp); reconnects after a failure are not bounded.
	ConnectConcurrency int
	// RecordLatency makes edges keep a latency sample per ConfigMap carrying
	// SentAtKey.
	RecordLatency bool
	// Edgeclient, when set, runs every edge through the edgeclient
	// library instead of the lean built-in client.
	Edgeclient *EdgeclientConfig
	// SingleEvents makes lean edges leave Hello.batches unset, as edges
	// before batches did: the server then sends every object event alone.
	SingleEvents bool
	// Subscriptions, when set, returns the subscriptions a node sends in
	// every Hello (the resources its applications read); the objects they
	// cover are held like any other (KIND_RESOURCE).
	Subscriptions func(node string) []*edgesyncv1.Subscription
}

// Counters are the fleet's running totals.
type Counters struct {
	// Connected counts streams that received Welcome and have not ended.
	Connected atomic.Int64
	// Synced counts current streams that received SyncComplete.
	Synced atomic.Int64
	// Objects counts object events received (APPLY and DELETE).
	Objects atomic.Int64
	// Redundant counts APPLY events for an object the edge already held at
	// that resource version.
	Redundant atomic.Int64
	// StatusResults counts answers to reports.
	StatusResults atomic.Int64
	// Heartbeats counts Heartbeat reports sent.
	Heartbeats atomic.Int64
	// StreamsEnded counts streams that ended with an error.
	StreamsEnded atomic.Int64

	// With edgeclient: APPLY events received, and those that changed
	// what the edge held; the difference is Redundant.
	clientApplies, clientChanges atomic.Int64
}

// RedundantObjects returns the APPLY events for objects already held at
// that version.
func (f *Fleet) RedundantObjects() int64 {
	if f.cfg.Edgeclient != nil {
		return f.C.clientApplies.Load() - f.C.clientChanges.Load()
	}
	return f.C.Redundant.Load()
}

// Fleet is a set of simulated edges.
type Fleet struct {
	cfg    Config
	dialer netx.Dialer
	edges  []*edge
	C      Counters

	mu        sync.Mutex // guards the fields below
	latencies []time.Duration
	lastErr   error
}

type edge struct {
	fleet *Fleet
	name  string
	conn  *grpc.ClientConn // nil with edgeclient
	addrs []string         // the server addresses in the order this edge tries them

	certFile, keyFile string // with edgeclient

	mu   sync.Mutex // guards the fields below
	held map[feed.Key]*edgesyncv1.ObjectRef
	at   map[feed.Key]time.Time // when each held object's version arrived
	// The current stream: the replica that welcomed it (Welcome's
	// server_id), and whether it is welcomed and synced.
	server            string
	connected, synced bool
	// When this edge last received Welcome and SyncComplete.
	welcomedAt, syncedAt time.Time
}

// addrs returns the addresses edge i tries, in order: Addrs rotated by i,
// or Addr alone.
func (c Config) addrs(i int) []string {
	if len(c.Addrs) == 0 {
		return []string{c.Addr}
	}
	k := i % len(c.Addrs)
	return append(slices.Clone(c.Addrs[k:]), c.Addrs[:k]...)
}

// New builds a fleet of edges named names holding the matching certificates.
// It does not connect: call Run.
func New(cfg Config, names []string, certificates []tls.Certificate) (*Fleet, error) {
	if len(names) != len(certificates) {
		return nil, errors.New("edgesim: one certificate per name")
	}
	f := &Fleet{cfg: cfg}
	for i, name := range names {
		addrs := cfg.addrs(i)
		if cfg.Edgeclient != nil {
			certFile, keyFile, err := writeCert(cfg.Edgeclient.CertDir, name, certificates[i])
			if err != nil {
				return nil, err
			}
			f.edges = append(f.edges, &edge{fleet: f, name: name, addrs: addrs, certFile: certFile, keyFile: keyFile, held: make(map[feed.Key]*edgesyncv1.ObjectRef)})
			continue
		}
		target, opts := addrs[0], TransportOptions()
		if len(addrs) > 1 {
			// One connection over every replica: pick_first tries the
			// addresses in order and, when one refuses, the next, so an
			// edge whose replica died reconnects to another one.
			r := manual.NewBuilderWithScheme("edgesim")
			rs := resolver.State{}
			for _, a := range addrs {
				rs.Addresses = append(rs.Addresses, resolver.Address{Addr: a})
			}
			r.InitialState(rs)
			target, opts = r.Scheme()+":///"+name, append(opts, grpc.WithResolvers(r))
		}
		conn, err := grpc.NewClient(target, append(opts,
			grpc.WithTransportCredentials(credentials.NewTLS(certs.ClientTLS(cfg.Roots, certificates[i]))),
			grpc.WithContextDialer(f.dialer.DialContext),
			grpc.WithConnectParams(grpc.ConnectParams{
				// Jittered and short, so that a restarted server sees a
				// storm spread over a few seconds, not a thundering herd
				// at one instant nor minutes of waiting.
				Backoff:           backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.5, MaxDelay: 5 * time.Second},
				MinConnectTimeout: 20 * time.Second,
			}))...,
		)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("edge %s: %w", name, err)
		}
		f.edges = append(f.edges, &edge{fleet: f, name: name, conn: conn, addrs: addrs, held: make(map[feed.Key]*edgesyncv1.ObjectRef)})
	}
	return f, nil
}

// maxRecvMessageBytes is grpc-go's default limit on a received message,
// which the lean edges keep: their batches stay within it.
const maxRecvMessageBytes = 4 << 20

// TransportOptions are the gRPC transport settings of a simulated edge, the
// same as edgeclient's: a small read buffer and a static 1 MiB receive
// window (no bandwidth-probing pings). The raw baseline uses them too.
func TransportOptions() []grpc.DialOption {
	const window = 1 << 20
	return []grpc.DialOption{
		grpc.WithReadBufferSize(8 << 10),
		grpc.WithStaticStreamWindowSize(window),
		grpc.WithStaticConnWindowSize(window),
	}
}

// Size is the number of edges.
func (f *Fleet) Size() int { return len(f.edges) }

// Close closes every edge's connection. Call it after Run returned.
func (f *Fleet) Close() {
	for _, e := range f.edges {
		if e.conn != nil {
			e.conn.Close()
		}
	}
}

// Run keeps every edge connected until ctx ends: each edge dials, holds its
// stream and, when the stream ends, opens a new one (the connection
// redials with jittered backoff). It returns when ctx ends.
func (f *Fleet) Run(ctx context.Context) {
	var g errgroup.Group
	ramp := make(chan struct{}, max(f.cfg.ConnectConcurrency, 1))
	for _, e := range f.edges {
		g.Go(func() error {
			select {
			case ramp <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
			released := false
			release := func() {
				if !released {
					released = true
					<-ramp
				}
			}
			if f.cfg.Edgeclient != nil {
				if err := e.runClient(ctx, release); err != nil {
					f.setErr(fmt.Errorf("edge %s: %w", e.name, err))
				}
				release()
				return nil
			}
			failures := 0
			for ctx.Err() == nil {
				began := time.Now()
				err := e.stream(ctx, release)
				release()
				if ctx.Err() != nil {
					break
				}
				f.C.StreamsEnded.Add(1)
				f.setErr(fmt.Errorf("edge %s: %w", e.name, err))
				// A stream that served a while ends when its server goes
				// or drops it: the next one opens at once (the connection
				// redials with its own backoff). One that ended within a
				// second (refused: a replica that cannot claim the node
				// or renew its replica Lease) waits, as edgeclient would,
				// so that refusals do not spin.
				if time.Since(began) >= time.Second {
					failures = 0
					continue
				}
				failures++
				if !sleepCtx(ctx, streamBackoff(failures)) {
					break
				}
			}
			return nil
		})
	}
	_ = g.Wait()
}

// Latencies returns and clears the latency samples recorded so far.
func (f *Fleet) Latencies() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.latencies
	f.latencies = nil
	return out
}

// LastError returns the last stream error seen, if any.
func (f *Fleet) LastError() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastErr
}

func (f *Fleet) setErr(err error) {
	f.mu.Lock()
	f.lastErr = err
	f.mu.Unlock()
}

// HeldVersion returns how many edges hold the object key at version rv.
func (f *Fleet) HeldVersion(key feed.Key, rv string) int {
	n := 0
	for _, e := range f.edges {
		e.mu.Lock()
		if ref, ok := e.held[key]; ok && ref.GetResourceVersion() == rv {
			n++
		}
		e.mu.Unlock()
	}
	return n
}

// Arrival is the version of an object an edge holds and when it arrived.
type Arrival struct {
	Version string
	At      time.Time
}

// Arrivals returns, by edge name, the version of key each edge holds and
// when it arrived.
func (f *Fleet) Arrivals(key feed.Key) map[string]Arrival {
	out := make(map[string]Arrival, len(f.edges))
	for _, e := range f.edges {
		e.mu.Lock()
		if ref, ok := e.held[key]; ok {
			out[e.name] = Arrival{Version: ref.GetResourceVersion(), At: e.at[key]}
		}
		e.mu.Unlock()
	}
	return out
}

// Streams counts the edges of one server replica: those whose current
// stream it welcomed, and those of them that received SyncComplete.
type Streams struct {
	Connected, Synced int
	// LastWelcome and LastSynced are the latest time one of these edges
	// received Welcome and SyncComplete on its current stream.
	LastWelcome, LastSynced time.Time
}

// ByServer returns, by server id (Welcome's server_id), how many edges hold
// a stream to that replica.
func (f *Fleet) ByServer() map[string]Streams {
	out := map[string]Streams{}
	for _, e := range f.edges {
		e.mu.Lock()
		if e.connected {
			s := out[e.server]
			s.Connected++
			if e.welcomedAt.After(s.LastWelcome) {
				s.LastWelcome = e.welcomedAt
			}
			if e.synced {
				s.Synced++
				if e.syncedAt.After(s.LastSynced) {
					s.LastSynced = e.syncedAt
				}
			}
			out[e.server] = s
		}
		e.mu.Unlock()
	}
	return out
}

// streamBackoff is the wait before the next stream after failures streams
// in a row ended within a second: 250 ms growing 1.6× to 5 s, each
// with up to half of it as random jitter.
func streamBackoff(failures int) time.Duration {
	d := 250 * time.Millisecond
	for range failures - 1 {
		d = min(d*8/5, 5*time.Second)
	}
	return d/2 + rand.N(d/2+1)
}

// sleepCtx waits d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (e *edge) setStream(server string, connected, synced bool) {
	now := time.Now()
	e.mu.Lock()
	if connected && (!e.connected || server != e.server) {
		e.welcomedAt = now
	}
	if synced && !e.synced {
		e.syncedAt = now
	}
	e.server, e.connected, e.synced = server, connected, synced
	e.mu.Unlock()
}

// HeldObjects returns the total number of objects held by all edges.
func (f *Fleet) HeldObjects() int {
	n := 0
	for _, e := range f.edges {
		e.mu.Lock()
		n += len(e.held)
		e.mu.Unlock()
	}
	return n
}

// stream holds one Sync stream until it fails or ctx ends. welcomed is
// called once Welcome arrived. Responses are read with shallowCodec.
func (e *edge) stream(ctx context.Context, welcomed func()) (err error) {
	c := &e.fleet.C
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := e.conn.NewStream(ctx, &edgesyncv1.SyncService_ServiceDesc.Streams[0], edgesyncv1.SyncService_Sync_FullMethodName,
		grpc.WaitForReady(true), grpc.ForceCodecV2(shallowCodec{}))
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	if err := st.SendMsg(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: e.hello()}}); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	var resp response
	if err := st.RecvMsg(&resp); err != nil {
		return fmt.Errorf("receive welcome: %w", err)
	}
	w := resp.welcome
	if w == nil {
		return errors.New("first message is not Welcome")
	}
	c.Connected.Add(1)
	e.setStream(w.GetServerId(), true, false)
	defer func() {
		e.setStream("", false, false)
		c.Connected.Add(-1)
	}()
	welcomed()
	synced := false
	defer func() {
		if synced {
			c.Synced.Add(-1)
		}
	}()

	// The sending goroutine acknowledges the newest sequence it is handed
	// and sends heartbeats; this goroutine receives. Like edgeclient, it
	// hands over only object events: control messages (Welcome,
	// SyncComplete, StatusResult) are not held by the server's window and
	// ride on the next object event's cumulative Ack.
	latest := make(chan uint64, 1)
	sendDone := make(chan error, 1)
	go func() { sendDone <- e.send(ctx, st, latest, w) }()
	defer func() {
		cancel()
		<-sendDone
	}()

	for {
		if err := st.RecvMsg(&resp); err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		switch {
		case resp.syncComplete:
			if !synced {
				synced = true
				e.setStream(w.GetServerId(), true, true)
				c.Synced.Add(1)
			}
			continue
		case resp.statusResult:
			c.StatusResults.Add(1)
			continue
		case len(resp.events) > 0:
			for i := range resp.events {
				e.apply(&resp.events[i])
			}
		case resp.ref == nil:
			continue // Welcome, or a message this simulator does not know
		default:
			e.apply(&resp)
		}
		select {
		case <-latest:
		default:
		}
		latest <- resp.sequence
	}
}

func (e *edge) send(ctx context.Context, st grpc.ClientStream, latest <-chan uint64, w *edgesyncv1.Welcome) error {
	var beat <-chan time.Time
	interval := w.GetHeartbeatInterval().AsDuration()
	if e.fleet.cfg.Heartbeats && interval > 0 {
		// The first heartbeat comes at a random point of the interval, as
		// edges that connected at different times would send it.
		first := time.NewTimer(rand.N(interval))
		defer first.Stop()
		beat = first.C
	}
	var ticker *time.Ticker
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	// Acknowledgements follow edgeclient's policy: at once when half the
	// window is unacknowledged, otherwise edgeclient.DefaultAckDelay after the
	// first unacknowledged object, covering everything received by then.
	half := max(uint64(w.GetAckWindow()/2), 1)
	ackTimer := time.NewTimer(time.Hour)
	ackTimer.Stop()
	defer ackTimer.Stop()
	var received, acked uint64
	var ackArmed bool
	var requestID uint64
	for {
		var req *edgesyncv1.SyncRequest
		select {
		case <-ctx.Done():
			return nil
		case received = <-latest:
			if received-acked < half {
				if !ackArmed {
					ackArmed = true
					ackTimer.Reset(edgeclient.DefaultAckDelay)
				}
				continue
			}
			req, acked = ackRequest(received), received
		case <-ackTimer.C:
			ackArmed = false
			if received == acked {
				continue
			}
			req, acked = ackRequest(received), received
		case <-beat:
			if ticker == nil {
				ticker = time.NewTicker(interval)
				beat = ticker.C
			}
			requestID++
			req = &edgesyncv1.SyncRequest{RequestId: requestID, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}
			e.fleet.C.Heartbeats.Add(1)
		}
		if err := st.SendMsg(req); err != nil {
			return err
		}
	}
}

func ackRequest(seq uint64) *edgesyncv1.SyncRequest {
	return &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Ack{Ack: &edgesyncv1.Ack{Sequence: seq}}}
}

func (e *edge) hello() *edgesyncv1.Hello {
	e.mu.Lock()
	defer e.mu.Unlock()
	h := &edgesyncv1.Hello{NodeName: e.name, AgentVersion: "edgesync-bench/edgesim"}
	if !e.fleet.cfg.SingleEvents {
		h.Batches = &edgesyncv1.Batches{MaxMessageBytes: maxRecvMessageBytes}
	}
	if e.fleet.cfg.Subscriptions != nil {
		h.Subscriptions = e.fleet.cfg.Subscriptions(e.name)
	}
	for _, ref := range e.held {
		h.HeldObjects = append(h.HeldObjects, ref)
	}
	return h
}

// apply records an object event as the edge's store would.
func (e *edge) apply(resp *response) {
	ref := resp.ref
	f := e.fleet
	f.C.Objects.Add(1)
	key := feed.Key{Kind: ref.GetKind(), Namespace: ref.GetNamespace(), Name: ref.GetName()}
	e.mu.Lock()
	if resp.deleted {
		delete(e.held, key)
		delete(e.at, key)
	} else {
		if e.at == nil {
			e.at = map[feed.Key]time.Time{}
		}
		if old, ok := e.held[key]; !ok || old.GetResourceVersion() != ref.GetResourceVersion() {
			e.at[key] = time.Now()
		}
		if old, ok := e.held[key]; ok && old.GetResourceVersion() == ref.GetResourceVersion() && old.GetUid() == ref.GetUid() {
			f.C.Redundant.Add(1)
		}
		e.held[key] = ref
	}
	e.mu.Unlock()
	if f.cfg.RecordLatency && resp.sentAt != "" {
		if ns, err := strconv.ParseInt(resp.sentAt, 10, 64); err == nil {
			d := time.Since(time.Unix(0, ns))
			f.mu.Lock()
			f.latencies = append(f.latencies, d)
			f.mu.Unlock()
		}
	}
}
