package edgeclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/edgesync/edgesync/edgeclient/backoff"
	"github.com/edgesync/edgesync/edgeclient/endpoints"
	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

const (
	// maxBatch bounds the messages applied in one store transaction.
	maxBatch = 64
	// defaultHeartbeat applies when Welcome carries no interval.
	defaultHeartbeat = 30 * time.Second
	// minLiveness is the shortest LivenessTimeout the client derives. A
	// dead link is noticed sooner by keepalive pings; this is the backstop
	// for a server that stopped answering but keeps the connection.
	minLiveness = time.Minute
	// keepaliveTime and keepaliveTimeout detect half-open connections; the
	// server allows pings every 5s or slower.
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
	// readBufferSize is the connection's read buffer: small, since an edge
	// receives little, and a simulator runs thousands of clients.
	readBufferSize = 8 << 10
	// receiveWindow is the stream's and connection's receive window:
	// room for a few large objects in flight. It is static so that gRPC
	// does not answer every message received with a window update and a
	// bandwidth-probing ping, which would double the frames of a heartbeat.
	receiveWindow = 1 << 20
)

// DefaultAckDelay is Config.AckDelay when it is zero.
const DefaultAckDelay = 20 * time.Millisecond

// Run connects to the server and keeps the node connected, reconnecting
// with jittered exponential backoff whenever the stream ends, until ctx
// ends; then it returns nil. It runs once at a time per Client.
func (c *Client) Run(ctx context.Context) error {
	if !c.runMu.TryLock() {
		return errors.New("edgeclient: Run is already running")
	}
	defer c.runMu.Unlock()
	if c.cfg.RenewCertificates {
		ctx, cancel := context.WithCancel(ctx)
		renewed := make(chan struct{})
		go func() {
			defer close(renewed)
			c.renewLoop(ctx)
		}()
		defer func() {
			cancel()
			<-renewed
		}()
	}
	b := backoff.New(c.cfg.Backoff)
	welcomed := false
	for gen := uint64(1); ; gen++ {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return ErrClosed
		}
		// Another replica after a failed attempt, the same after a
		// session (package endpoints).
		ep := c.endpoints.Next(ctx, welcomed)
		var err error
		welcomed, err = c.session(ctx, gen, ep)
		if welcomed {
			b.Reset()
		}
		if IsRevoked(err) {
			c.revoked(ctx, err)
		}
		delay := b.Next()
		c.updateState(func(s *State) {
			s.Connected, s.Synced, s.SessionID, s.ServerID = false, false, "", ""
			if ctx.Err() == nil && err != nil {
				s.LastError = err.Error()
				s.Reconnects++
				s.RetryDelay = delay
			}
		})
		if ctx.Err() != nil {
			return nil
		}
		c.log.Info("not connected to the server; retrying", zap.Stringer("server", ep), zap.Error(err), zap.Duration("retry_in", delay))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// session is one Sync stream. Three goroutines share it: receive (the only
// caller of Recv), apply (store, events, control messages) and send (the
// only caller of Send after Hello).
type session struct {
	c        *Client
	gen      uint64
	endpoint endpoints.Endpoint // where the stream goes
	stream   grpc.BidiStreamingClient[edgesyncv1.SyncRequest, edgesyncv1.SyncResponse]
	wake     chan struct{} // buffered(1): something for send to do

	welcomeCh chan struct{} // closed by apply when Welcome arrives
	tunnels   *tunnels      // serves TunnelOpen
	welcomed  atomic.Bool

	mu      sync.Mutex // guards the fields below
	welcome *edgesyncv1.Welcome
	applied uint64 // highest sequence applied
	acked   uint64 // highest sequence acknowledged
	ackNow  bool   // send an Ack without waiting for more
	// ackSoon: send an Ack within Config.AckDelay unless ackNow comes first.
	ackSoon bool
	// objectsUnacked: an object event was applied since the last Ack.
	objectsUnacked bool
	// objectSeq is the sequence of the last applied batch that carried an
	// object event: an Ack up to it leaves no object unacknowledged, even
	// if control messages were applied after the Ack's sequence was taken.
	objectSeq uint64
	nacks     []*edgesyncv1.Nack
}

func (s *session) wakeSender() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// session runs one stream until it fails or ctx ends. welcomed says
// whether the server accepted it, which resets the backoff.
func (c *Client) session(ctx context.Context, gen uint64, ep endpoints.Endpoint) (welcomed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tlsCfg, err := c.tlsConfig()
	if err != nil {
		return false, err
	}
	// The certificate names the configured host, whichever of its
	// addresses is dialed.
	tlsCfg.ServerName = ep.ServerName
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(c.cfg.MaxRecvMessageBytes)),
		grpc.WithSharedWriteBuffer(true),
		grpc.WithReadBufferSize(readBufferSize),
		grpc.WithStaticStreamWindowSize(receiveWindow),
		grpc.WithStaticConnWindowSize(receiveWindow),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
	}, c.cfg.DialOptions...)
	// A connection per stream: every stream starts with a fresh TLS
	// handshake (and so a rotated certificate), and the client's backoff
	// alone decides when to dial.
	cc, err := grpc.NewClient("passthrough:///"+ep.Addr, opts...)
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", ep, err)
	}
	defer cc.Close()

	g, gctx := errgroup.WithContext(ctx)
	stream, err := edgesyncv1.NewSyncServiceClient(cc).Sync(gctx)
	if err != nil {
		return false, fmt.Errorf("open stream to %s: %w", ep, err)
	}
	refs, err := c.store.Refs()
	if err != nil {
		return false, err
	}
	hello := &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{
		NodeName: c.cfg.NodeName, AgentVersion: c.cfg.AgentVersion, HeldObjects: refs,
		Subscriptions: c.subscriptionSet(),
		// Several object events may come in one message (EventBatch),
		// within what this client receives.
		Batches: &edgesyncv1.Batches{MaxMessageBytes: uint32(min(uint64(c.cfg.MaxRecvMessageBytes), math.MaxUint32))},
	}}}
	if err := stream.Send(hello); err != nil {
		if errors.Is(err, io.EOF) {
			_, err = stream.Recv()
		}
		return false, fmt.Errorf("send hello: %w", err)
	}
	c.log.Debug("sent hello", zap.Int("held_objects", len(refs)))
	c.forgetSentEvents() // answers to a previous stream's events will not come

	s := &session{c: c, gen: gen, endpoint: ep, stream: stream, wake: make(chan struct{}, 1), welcomeCh: make(chan struct{})}
	s.tunnels = c.newTunnels(ctx, cc)
	defer s.tunnels.close()
	c.mu.Lock()
	c.wake, c.conn = s.wakeSender, cc
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.wake, c.conn = nil, nil
		c.mu.Unlock()
	}()

	msgs := make(chan *edgesyncv1.SyncResponse, maxBatch)
	g.Go(func() error { return s.receive(gctx, msgs) })
	g.Go(func() error { return s.apply(gctx, msgs) })
	g.Go(func() error { return s.sendLoop(gctx) })
	err = g.Wait()
	return s.welcomed.Load(), err
}

// receive is the stream's only Recv caller; it closes msgs when it returns.
// The events of an EventBatch go on one by one, as if each had come alone.
func (s *session) receive(ctx context.Context, msgs chan<- *edgesyncv1.SyncResponse) error {
	defer close(msgs)
	for {
		m, err := s.stream.Recv()
		if errors.Is(err, io.EOF) {
			return errors.New("server ended the stream")
		}
		if err != nil {
			return fmt.Errorf("stream: %w", err)
		}
		one := []*edgesyncv1.SyncResponse{m}
		if b := m.GetEventBatch(); b != nil {
			if err := checkBatch(m.GetSequence(), b); err != nil {
				return err
			}
			one = b.GetEvents()
		}
		for _, m := range one {
			select {
			case msgs <- m:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// checkBatch refuses a batch that breaks the protocol's promises (object
// events only, consecutive sequences ending at the batch's own), which
// would otherwise acknowledge what was never applied.
func checkBatch(seq uint64, b *edgesyncv1.EventBatch) error {
	events := b.GetEvents()
	if len(events) == 0 {
		return fmt.Errorf("server sent an empty event batch (sequence %d)", seq)
	}
	first := seq - uint64(len(events)) + 1
	for i, ev := range events {
		if ev.GetSequence() != first+uint64(i) || !isObjectEvent(ev) {
			return fmt.Errorf("server sent a malformed event batch (sequence %d): event %d has sequence %d and is %T", seq, i, ev.GetSequence(), ev.GetMessage())
		}
	}
	return nil
}

func (s *session) liveness() time.Duration {
	if d := s.c.cfg.LivenessTimeout; d > 0 {
		return d
	}
	s.mu.Lock()
	hb := s.welcome.GetHeartbeatInterval().AsDuration()
	s.mu.Unlock()
	return max(4*hb, minLiveness)
}

// apply takes messages in batches: it writes a batch's object changes to the
// store in one transaction, then delivers events and handles control
// messages in order, then lets send acknowledge the batch.
func (s *session) apply(ctx context.Context, msgs <-chan *edgesyncv1.SyncResponse) error {
	liveness := s.liveness()
	timer := time.NewTimer(liveness)
	defer timer.Stop()
	batch := make([]*edgesyncv1.SyncResponse, 0, maxBatch)
	for {
		batch = batch[:0]
		select {
		case m, ok := <-msgs:
			if !ok {
				return nil // receive returned the stream's error
			}
			batch = append(batch, m)
		case <-timer.C:
			return fmt.Errorf("nothing received from the server for %v; assuming the connection is dead", liveness)
		case <-ctx.Done():
			return nil
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case m, ok := <-msgs:
				if !ok {
					break drain
				}
				batch = append(batch, m)
			default:
				break drain
			}
		}
		if err := s.applyBatch(ctx, batch); err != nil {
			return err
		}
		s.noteApplied(batch[len(batch)-1].GetSequence(), len(msgs) == 0, carriesObject(batch))
		liveness = s.liveness()
		timer.Reset(liveness)
	}
}

// noteApplied records that every message up to seq is applied and asks
// send to acknowledge at once when half the window is unacknowledged, or
// within Config.AckDelay when nothing more is waiting. Control messages (Welcome, SyncComplete, StatusResult)
// are not held by the server's window, so they are not acknowledged on
// their own: the next object event's Ack covers them (acks are
// cumulative). That saves a message per heartbeat and per report.
func (s *session) noteApplied(seq uint64, idle, objects bool) {
	s.mu.Lock()
	s.applied = seq
	s.objectsUnacked = s.objectsUnacked || objects
	if objects {
		s.objectSeq = seq
	}
	half := uint64(s.welcome.GetAckWindow() / 2)
	switch {
	case !s.objectsUnacked:
	case seq-s.acked >= max(half, 1):
		s.ackNow = true
	case idle:
		s.ackSoon = true
	}
	s.mu.Unlock()
	s.wakeSender()
}

// carriesObject reports whether batch holds an object event.
func carriesObject(batch []*edgesyncv1.SyncResponse) bool {
	for _, m := range batch {
		if isObjectEvent(m) {
			return true
		}
	}
	return false
}

// isObjectEvent reports whether m carries one object event.
func isObjectEvent(m *edgesyncv1.SyncResponse) bool {
	switch m.GetMessage().(type) {
	case *edgesyncv1.SyncResponse_PodEvent, *edgesyncv1.SyncResponse_ConfigMapEvent,
		*edgesyncv1.SyncResponse_SecretEvent, *edgesyncv1.SyncResponse_DeviceEvent,
		*edgesyncv1.SyncResponse_NodeEvent, *edgesyncv1.SyncResponse_ServiceEvent,
		*edgesyncv1.SyncResponse_EndpointSliceEvent, *edgesyncv1.SyncResponse_TokenEvent,
		*edgesyncv1.SyncResponse_ResourceEvent, *edgesyncv1.SyncResponse_SubscriptionEvent:
		return true
	}
	return false
}

func (s *session) nack(seq uint64, key store.Key, rec *store.Record, reason string) {
	ref := &edgesyncv1.ObjectRef{Kind: key.Kind, Namespace: key.Namespace, Name: key.Name}
	if rec != nil {
		ref.Uid, ref.ResourceVersion = rec.UID, rec.ResourceVersion
	}
	s.c.log.Warn("refusing object", zap.Stringer("object", key), zap.String("reason", reason))
	s.mu.Lock()
	s.nacks = append(s.nacks, &edgesyncv1.Nack{Sequence: seq, Object: ref, Reason: reason})
	s.mu.Unlock()
	s.c.updateState(func(st *State) { st.Nacks++ })
}

// step is one message of a batch, with what it does to the store.
type step struct {
	msg    *edgesyncv1.SyncResponse
	object bool
	ev     objectEvent
	old    *store.Record // what the store held before
	bad    error
}

func (s *session) applyBatch(ctx context.Context, batch []*edgesyncv1.SyncResponse) error {
	steps := make([]step, len(batch))
	var changes []store.Change
	var applies, deletes uint64
	overlay := map[store.Key]*store.Record{} // the batch's effect so far
	for i, m := range batch {
		st := &steps[i]
		st.msg = m
		ev, isObj, err := splitEvent(m)
		st.object, st.ev, st.bad = isObj, ev, err
		if !isObj || err != nil {
			continue
		}
		old, seen := overlay[ev.key]
		if !seen {
			if old, err = s.c.store.Get(ev.key); err != nil {
				return fmt.Errorf("read store: %w", err)
			}
		}
		st.old = old
		overlay[ev.key] = ev.record
		changes = append(changes, store.Change{Key: ev.key, Record: ev.record})
		if ev.record != nil {
			applies++
		} else {
			deletes++
		}
	}
	if len(changes) > 0 {
		if err := s.c.store.Apply(changes); err != nil {
			// The store is broken; acknowledging would lose the change.
			return err
		}
		s.c.updateState(func(st *State) {
			st.ObjectsReceived += applies
			st.DeletesReceived += deletes
		})
	}
	for i := range steps {
		st := &steps[i]
		switch {
		case st.bad != nil:
			s.nack(st.msg.GetSequence(), st.ev.key, st.ev.record, st.bad.Error())
		case st.object:
			s.deliver(ctx, st)
		default:
			s.control(st.msg)
		}
	}
	return nil
}

// deliver turns one applied object event into Events for OnEvent.
func (s *session) deliver(ctx context.Context, st *step) {
	on := s.c.cfg.OnEvent
	if on == nil {
		return
	}
	rec, old, seq := st.ev.record, st.old, st.msg.GetSequence()
	var events []Event
	switch {
	case rec == nil && old == nil: // forgetting what is not held
	case rec == nil:
		events = append(events, Event{Type: Deleted, Key: old.Key, UID: old.UID, ResourceVersion: old.ResourceVersion})
	case old == nil:
		events = append(events, Event{Type: Added, Key: rec.Key, UID: rec.UID, ResourceVersion: rec.ResourceVersion})
	case old.UID != rec.UID: // deleted and created again under the same name
		events = append(events,
			Event{Type: Deleted, Key: old.Key, UID: old.UID, ResourceVersion: old.ResourceVersion},
			Event{Type: Added, Key: rec.Key, UID: rec.UID, ResourceVersion: rec.ResourceVersion})
	case old.ResourceVersion != rec.ResourceVersion:
		events = append(events, Event{Type: Modified, Key: rec.Key, UID: rec.UID, ResourceVersion: rec.ResourceVersion})
	}
	for _, ev := range events {
		ev.Sequence = seq
		var err error
		src := rec
		if ev.Type == Deleted {
			src = old
		}
		if ev.Object, err = Decode(src); err != nil {
			s.nack(seq, ev.Key, rec, err.Error())
			continue
		}
		if ev.Type == Modified {
			o, err := Decode(old)
			if err == nil {
				ev.Old = &o
			}
		}
		if err := on(ctx, ev); err != nil {
			s.nack(seq, ev.Key, rec, err.Error())
		}
	}
}

// control handles Welcome, SyncComplete, StatusResult and TunnelOpen.
func (s *session) control(msg *edgesyncv1.SyncResponse) {
	c := s.c
	switch m := msg.GetMessage().(type) {
	case *edgesyncv1.SyncResponse_Welcome:
		if s.welcomed.Load() {
			c.log.Warn("ignoring a second Welcome")
			return
		}
		s.mu.Lock()
		s.welcome = m.Welcome
		s.mu.Unlock()
		s.welcomed.Store(true)
		close(s.welcomeCh)
		c.updateState(func(st *State) {
			st.Connected, st.Synced, st.Revoked = true, false, false
			st.SessionID, st.ServerID = m.Welcome.GetSessionId(), m.Welcome.GetServerId()
			st.ConnectedSince = time.Now()
			st.Connections++
		})
		c.log.Info("connected", zap.Stringer("server", s.endpoint), zap.String("session", m.Welcome.GetSessionId()), zap.String("server_id", m.Welcome.GetServerId()))
	case *edgesyncv1.SyncResponse_SyncComplete:
		c.updateState(func(st *State) {
			st.Synced = true
			st.LastSync = time.Now()
			st.LastSyncSent, st.LastSyncDeleted = m.SyncComplete.GetObjectsSent(), m.SyncComplete.GetObjectsDeleted()
		})
		c.log.Debug("initial sync complete", zap.Uint32("sent", m.SyncComplete.GetObjectsSent()), zap.Uint32("deleted", m.SyncComplete.GetObjectsDeleted()))
		c.restate()
	case *edgesyncv1.SyncResponse_StatusResult:
		c.answer(m.StatusResult)
	case *edgesyncv1.SyncResponse_TunnelOpen:
		s.tunnels.open(m.TunnelOpen.GetTunnelId())
	default:
		if c.routeMessage(msg) {
			return
		}
		// A newer server may send messages this client does not know.
		c.log.Debug("ignoring unknown message", zap.Uint64("sequence", msg.GetSequence()))
	}
}

// send is the stream's only Send caller after Hello: Nacks, Acks, and,
// once welcomed, heartbeats and reports within the server's rate.
func (s *session) send(ctx context.Context) error {
	c := s.c
	var (
		welcomeCh  = s.welcomeCh
		heartbeats <-chan time.Time
		retry      <-chan time.Time
		limiter    *rate.Limiter
		maxBytes   int
		ticker     *time.Ticker
		ackTimer   = time.NewTimer(c.cfg.AckDelay)
		ackDue     <-chan time.Time // ackTimer.C while an Ack waits
		events     = rate.NewLimiter(eventRate, eventBurst)
	)
	ackTimer.Stop()
	defer ackTimer.Stop()
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		case <-welcomeCh:
			welcomeCh = nil
			s.mu.Lock()
			w := s.welcome
			s.mu.Unlock()
			interval := w.GetHeartbeatInterval().AsDuration()
			if interval <= 0 {
				interval = defaultHeartbeat
			}
			ticker = time.NewTicker(interval)
			heartbeats = ticker.C
			if n := w.GetMaxReportsPerSecond(); n > 0 {
				limiter = rate.NewLimiter(rate.Limit(n), int(n))
			}
			maxBytes = int(w.GetMaxMessageBytes())
			c.heartbeat()
		case <-heartbeats:
			c.heartbeat()
		case <-retry:
			retry = nil
		case <-ackDue:
			ackDue = nil
			s.mu.Lock()
			s.ackNow = true
			s.mu.Unlock()
		}

		s.mu.Lock()
		nacks, applied, ackNow, ackSoon := s.nacks, s.applied, s.ackNow, s.ackSoon
		s.nacks, s.ackNow, s.ackSoon = nil, false, false
		acked, objectSeq := s.acked, s.objectSeq
		s.mu.Unlock()
		for _, n := range nacks {
			if err := s.write(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Nack{Nack: n}}); err != nil {
				return err
			}
		}
		// Only object events need an Ack (a timer armed for one that an
		// earlier Ack already covered must not send one for control
		// messages alone).
		if ackNow && applied > acked && objectSeq > acked {
			if err := s.write(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Ack{Ack: &edgesyncv1.Ack{Sequence: applied}}}); err != nil {
				return err
			}
			s.mu.Lock()
			s.acked = applied
			s.objectsUnacked = s.objectSeq > applied
			s.mu.Unlock()
		} else if ackSoon && ackDue == nil {
			ackTimer.Reset(c.cfg.AckDelay)
			ackDue = ackTimer.C
		}

		for _, a := range c.takeRouteAnswers() {
			if err := s.write(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_RouteResult{RouteResult: a}}); err != nil {
				return err
			}
		}
		if welcomeCh != nil || retry != nil {
			continue
		}
		for _, r := range c.unsent(s.gen) {
			if maxBytes > 0 && proto.Size(r.req) > maxBytes {
				c.drop(r, status.Errorf(codes.ResourceExhausted, "report %s is %d bytes, more than the server accepts (%d)", r.key, proto.Size(r.req), maxBytes))
				continue
			}
			if limiter != nil && r.req.GetRouteMessage() == nil {
				res := limiter.Reserve()
				if d := res.Delay(); d > 0 {
					res.Cancel()
					retry = time.After(d)
					break
				}
			}
			if err := s.write(r.req); err != nil {
				return err
			}
			c.markSent(r, s.gen)
		}
		if retry == nil {
			wait, err := s.sendEvents(events)
			if err != nil {
				return err
			}
			if wait > 0 {
				retry = time.After(wait)
			}
		}
	}
}

// write sends one message. When the stream is broken it returns
// errStreamBroken, and send returns quietly: receive gets the stream's
// status and reports it.
func (s *session) write(m *edgesyncv1.SyncRequest) error {
	err := s.stream.Send(m)
	if errors.Is(err, io.EOF) {
		return errStreamBroken
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

var errStreamBroken = errors.New("stream broken")

// sendLoop runs send, hiding errStreamBroken (see write).
func (s *session) sendLoop(ctx context.Context) error {
	if err := s.send(ctx); !errors.Is(err, errStreamBroken) {
		return err
	}
	return nil
}
