package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
	"github.com/edgesync/edgesync/server/frame"
	"github.com/edgesync/edgesync/server/queue"
)

// maxControl bounds the control messages (report answers) waiting for an
// edge that does not read its stream.
const maxControl = 4096

type syncService struct {
	edgesyncv1.UnimplementedSyncServiceServer
	srv *Server
}

// AuthFuncOverride admits node certificates only (auth interceptor hook).
func (*syncService) AuthFuncOverride(ctx context.Context, _ string) (context.Context, error) {
	return authorizeNode(ctx)
}

// Sync runs one edge session. Besides gRPC's own goroutines of the
// connection, these serve it: this handler, which performs the handshake
// and initial sync and then waits for the session to end; recvLoop, the
// only caller of Recv; and, while there is something to send, sendLoop,
// started on demand by signal and gone once the session has nothing left
// to send (the window full, or the queue and control messages empty), so
// that an idle session holds no sending goroutine and its stack. Send
// calls are serialized by sendMu: recvLoop also sends answers given while
// it hands a report over (a heartbeat whose Lease is fresh), saving a
// goroutine per report. The session ends through s.end (first cause wins),
// which cancels s.ctx; the handler then returns the cause as the stream's
// status, which ends the stream and unblocks the others (a Send blocked on
// flow control returns once the stream ended, which is why the handler
// does not send itself).
func (svc *syncService) Sync(stream grpc.BidiStreamingServer[edgesyncv1.SyncRequest, edgesyncv1.SyncResponse]) (err error) {
	srv := svc.srv
	s := newSession(srv, stream)
	defer s.cancel(nil)
	defer func() { srv.metrics.ended.WithLabelValues(status.Code(err).String()).Inc() }()
	// The handler holds the server's WaitGroup while senders may start,
	// so that they are counted there too (see signal).
	srv.wg.Add(1)
	defer srv.wg.Done()
	defer s.closeSenders()

	srv.wg.Add(1)
	go s.recvLoop()

	timer := time.NewTimer(srv.opts.HelloTimeout)
	var hello *edgesyncv1.Hello
	select {
	case hello = <-s.hello:
		timer.Stop()
	case <-s.ctx.Done():
		timer.Stop()
		return toStatus(context.Cause(s.ctx))
	case <-timer.C:
		return status.Errorf(codes.DeadlineExceeded, "no Hello within %s of opening the stream", srv.opts.HelloTimeout)
	}

	// Admitted before it registers, so that a refused stream never
	// replaces a session of the same node.
	if err := srv.admit(s.node); err != nil {
		return err
	}
	if err := srv.register(s); err != nil {
		return err
	}
	defer srv.unregister(s)
	// With several replicas this one takes the node's ownership while the
	// initial sync runs; the node's reports wait for it (claim.go).
	s.startClaim()
	srv.log.Info("session started",
		zap.String("node", s.node), zap.String("peer", s.peer), zap.String("session_id", s.id),
		zap.String("agent_version", hello.GetAgentVersion()), zap.Int("held_objects", len(hello.GetHeldObjects())))

	// Welcome is queued before reports are handled, so it goes first.
	s.pushControl(&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_Welcome{Welcome: &edgesyncv1.Welcome{
		SessionId:           s.id,
		ServerId:            srv.opts.ServerID,
		HeartbeatInterval:   durationpb.New(srv.opts.HeartbeatInterval),
		AckWindow:           uint32(srv.opts.AckWindow),
		MaxMessageBytes:     uint32(srv.opts.MaxMessageBytes),
		MaxReportsPerSecond: uint32(srv.opts.ReportsPerSecond),
	}}})

	srv.adopt(s.node, hello)
	// Registered above, so every Publish from now on reaches the queue;
	// Desired cannot miss a change. Reports are handled only once Desired
	// succeeded: the controllers answer both from the same caches, and a
	// report answered "caches still loading" would be an edge's lost
	// report rather than a session to retry.
	if _, err := s.queueDifference(); err != nil {
		s.end(desiredError(s.node, err))
	} else {
		s.mu.Lock()
		s.initialMark = s.queue.Mark()
		s.initialQueued = true
		s.mu.Unlock()
		close(s.started)
		s.signal()
	}

	<-s.ctx.Done()
	return toStatus(context.Cause(s.ctx))
}

// desiredError explains why the objects of node could not be listed,
// keeping the controllers' status code (UNAVAILABLE for other errors).
func desiredError(node string, err error) error {
	st := controllerStatus(err)
	return status.Errorf(st.Code(), "cannot tell what node %q should hold: %s", node, st.Message())
}

// controllerStatus is the status of an error the controllers returned or
// gave, the one place their error kinds become gRPC codes on a stream: the
// code of its kind (feed.ErrorKind) with its whole message, a gRPC status
// the server made itself (details kept, such as a revocation's), and
// UNAVAILABLE otherwise (the edge dials again).
func controllerStatus(err error) *status.Status {
	if k := feed.KindOf(err); k != feed.KindUnknown {
		return status.New(k.Code(), err.Error())
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st
	}
	return status.New(codes.Unavailable, err.Error())
}

// session is one edge's stream.
type session struct {
	srv       *Server
	stream    grpc.ServerStream
	id        string
	node      string
	peer      string
	connected time.Time
	ctx       context.Context
	cancel    context.CancelCauseFunc
	queue     *queue.Queue
	limiter   *rate.Limiter
	hello     chan *edgesyncv1.Hello // capacity 1; recvLoop sends the Hello
	started   chan struct{}          // closed by the handler once the initial objects are queued
	// sending is set while a sendLoop goroutine runs; pending is set by
	// signal and cleared by sendLoop before it looks at what to send.
	sending, pending atomic.Bool

	sendMu sync.Mutex // held around SendMsg calls
	// lastReceived is when the edge last sent anything (unix nanoseconds).
	lastReceived atomic.Int64

	mu             sync.Mutex // guards the fields below
	answering      bool       // a goroutine is in report (recvLoop, or the claim releasing held reports): it sends answers itself
	sendersClosed  bool       // the handler returned: signal starts no sender
	agentVersion   string
	batchBytes     int // the largest batch the edge accepts; 0: single events only (batch.go)
	control        []*edgesyncv1.SyncResponse
	inflight       []sentObject // object events sent and not acknowledged, by sequence
	lastSent       uint64
	lastAcked      uint64
	lastAckTime    time.Time
	lastHeartbeat  time.Time
	initialMark    uint64
	initialQueued  bool
	syncComplete   bool
	initialApplied uint32
	// owned is set once this replica owns the node (at once with a single
	// replica); until then reports wait in held (claim.go).
	owned          bool
	held           []heldReport
	initialDeleted uint32
	messagesSent   uint64
	nacks          uint64
	lastNack       *edgesyncv1.NackRecord
}

type sentObject struct {
	sequence uint64
	entry    queue.Entry
}

func newSession(srv *Server, stream grpc.ServerStream) *session {
	ctx, cancel := context.WithCancelCause(stream.Context())
	var idBytes [8]byte
	_, _ = rand.Read(idBytes[:])
	s := &session{
		srv:       srv,
		stream:    stream,
		id:        hex.EncodeToString(idBytes[:]),
		node:      nodeFromContext(stream.Context()),
		connected: time.Now(),
		ctx:       ctx,
		cancel:    cancel,
		queue:     queue.New(),
		limiter:   rate.NewLimiter(rate.Limit(srv.opts.ReportsPerSecond), srv.opts.ReportBurst),
		hello:     make(chan *edgesyncv1.Hello, 1),
		started:   make(chan struct{}),
	}
	if p, ok := peer.FromContext(stream.Context()); ok {
		s.peer = p.Addr.String()
	}
	s.lastReceived.Store(s.connected.UnixNano())
	return s
}

// end ends the session with err as its status; the first cause wins.
func (s *session) end(err error) { s.cancel(err) }

// signal says there may be something to send: a message was queued, a
// control message waits, or an acknowledgement opened the window. It starts
// sendLoop unless one runs; a running one looks again before it stops.
func (s *session) signal() {
	s.pending.Store(true)
	if !s.sending.CompareAndSwap(false, true) {
		return
	}
	s.mu.Lock()
	if s.sendersClosed {
		s.mu.Unlock()
		s.sending.Store(false)
		return
	}
	s.srv.wg.Add(1) // the handler's count keeps it above zero here
	s.mu.Unlock()
	go s.sendLoop()
}

// closeSenders stops signal from starting senders once the handler
// returns; a running one ends with the stream.
func (s *session) closeSenders() {
	s.mu.Lock()
	s.sendersClosed = true
	s.mu.Unlock()
}

// errEdgeClosed ends a session whose edge closed its side of the stream.
var errEdgeClosed = errors.New("edge closed the stream")

func (s *session) recvLoop() {
	defer s.srv.wg.Done()
	first := new(edgesyncv1.SyncRequest)
	err := s.stream.RecvMsg(first)
	if err == nil {
		err = decodeError(first)
	}
	if err != nil {
		s.end(recvError(err))
		return
	}
	hello, err := checkHello(first, s.node)
	if err != nil {
		s.end(err)
		return
	}
	s.mu.Lock()
	s.agentVersion = hello.GetAgentVersion()
	s.batchBytes = batchBytes(hello)
	s.mu.Unlock()
	for _, ref := range hello.GetHeldObjects() {
		s.queue.Hold(feed.Key{Kind: ref.GetKind(), Namespace: ref.GetNamespace(), Name: ref.GetName()}, queue.Held{UID: ref.GetUid(), ResourceVersion: ref.GetResourceVersion()})
	}
	s.hello <- hello
	select {
	case <-s.started:
	case <-s.ctx.Done():
		return
	}
	for {
		req := new(edgesyncv1.SyncRequest)
		err := s.stream.RecvMsg(req)
		if err == nil {
			err = decodeError(req)
		}
		if err != nil {
			s.end(recvError(err))
			return
		}
		s.lastReceived.Store(time.Now().UnixNano())
		if s.ctx.Err() != nil {
			return
		}
		if err := s.receive(req); err != nil {
			s.end(err)
			return
		}
	}
}

func recvError(err error) error {
	if errors.Is(err, io.EOF) {
		return errEdgeClosed
	}
	return err
}

// decodeError is the status for a message that did not decode (package
// frame keeps it from gRPC, which would answer INTERNAL; found by
// FuzzSyncRequest), nil for one that did.
func decodeError(req *edgesyncv1.SyncRequest) error {
	if err := frame.DecodeError(req); err != nil {
		return status.Errorf(codes.InvalidArgument, "the message is not a valid edgesync.v1.SyncRequest (%v); encode it with the protobuf definitions in api/edgesync/v1", err)
	}
	return nil
}

func checkHello(req *edgesyncv1.SyncRequest, certNode string) (*edgesyncv1.Hello, error) {
	if req.GetMessage() == nil {
		return nil, status.Error(codes.InvalidArgument, "SyncRequest has no message set; set exactly one, starting with hello")
	}
	hello := req.GetHello()
	if hello == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "the first message of a Sync stream must be hello, got %s", messageName(req))
	}
	if hello.GetNodeName() != certNode {
		return nil, status.Errorf(codes.PermissionDenied, "hello is for node %q but the client certificate is for node %q", hello.GetNodeName(), certNode)
	}
	for i, ref := range hello.GetHeldObjects() {
		if ref.GetKind() == edgesyncv1.Kind_KIND_UNSPECIFIED || ref.GetName() == "" {
			return nil, status.Errorf(codes.InvalidArgument, "hello.held_objects[%d]: kind and name are required", i)
		}
	}
	return hello, nil
}

func messageName(req *edgesyncv1.SyncRequest) string {
	m := req.ProtoReflect()
	if fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("message")); fd != nil {
		return string(fd.Name())
	}
	return "nothing"
}

// receive handles one message after Hello.
func (s *session) receive(req *edgesyncv1.SyncRequest) error {
	switch m := req.GetMessage().(type) {
	case nil:
		return status.Error(codes.InvalidArgument, "SyncRequest has no message set; set exactly one")
	case *edgesyncv1.SyncRequest_Hello:
		return status.Error(codes.InvalidArgument, "hello may be sent only once, as the first message")
	case *edgesyncv1.SyncRequest_Ack:
		return s.ack(m.Ack.GetSequence())
	case *edgesyncv1.SyncRequest_Nack:
		return s.nack(m.Nack)
	case *edgesyncv1.SyncRequest_RouteResult:
		s.srv.routeResult(s.node, m.RouteResult)
		return nil
	}
	kind := reportKind(req)
	if req.GetRequestId() == 0 {
		return status.Errorf(codes.InvalidArgument, "%s report has request_id 0; give every report a non-zero request_id", kind)
	}
	// Events and routed messages have budgets of their own in the
	// controllers, which refuse what exceeds them: a flood of either must
	// not end the stream and so stop the node's status reports.
	if kind != "event" && kind != "route_message" && !s.limiter.Allow() {
		return status.Errorf(codes.ResourceExhausted, "too many reports: more than %d per second (burst %d); send status only when it changes", s.srv.opts.ReportsPerSecond, s.srv.opts.ReportBurst)
	}
	return s.reportWhenOwned(kind, req)
}

// report hands a report to the controllers; a panic there ends only this
// session, with INTERNAL. Answers given before HandleReport returns are
// sent from here, without waking sendLoop.
func (s *session) report(kind string, req *edgesyncv1.SyncRequest) (err error) {
	s.mu.Lock()
	s.answering = true
	if kind == "heartbeat" {
		s.lastHeartbeat = time.Now()
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.answering = false
		pending := len(s.control) > 0
		s.mu.Unlock()
		if pending {
			s.sendAnswers()
		}
	}()
	defer func() {
		if p := recover(); p != nil {
			s.srv.log.Error("panic handling report", zap.String("node", s.node), zap.String("kind", kind), zap.Any("panic", p), zap.Stack("stack"))
			err = status.Errorf(codes.Internal, "internal error handling %s report %d; the server logged the details", kind, req.GetRequestId())
		}
	}()
	s.srv.ctrls.HandleReport(s.node, req, func(res *edgesyncv1.StatusResult) {
		if res == nil {
			return
		}
		s.srv.metrics.upstream.WithLabelValues(kind, codes.Code(res.GetCode()).String()).Inc()
		s.pushControl(&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_StatusResult{StatusResult: res}})
	})
	return nil
}

func (s *session) ack(seq uint64) error {
	now := time.Now()
	s.mu.Lock()
	if seq > s.lastSent {
		last := s.lastSent
		s.mu.Unlock()
		return status.Errorf(codes.InvalidArgument, "ack for sequence %d, but the newest message sent has sequence %d", seq, last)
	}
	if seq <= s.lastAcked {
		s.mu.Unlock()
		return nil
	}
	s.lastAcked, s.lastAckTime = seq, now
	n := 0
	for n < len(s.inflight) && s.inflight[n].sequence <= seq {
		sent := s.inflight[n]
		s.queue.Acknowledged(sent.entry)
		s.srv.metrics.ackedObjects.of(sent.entry.Object.Key.Kind).Inc()
		s.srv.metrics.latency.Observe(now.Sub(sent.entry.Queued).Seconds())
		s.inflight[n] = sentObject{}
		n++
	}
	s.inflight = s.inflight[n:]
	s.mu.Unlock()
	if n > 0 {
		s.signal()
	}
	return nil
}

// nack records that the edge could not apply an object. Each message is
// recorded once, so nacks are bounded by the messages sent.
func (s *session) nack(n *edgesyncv1.Nack) error {
	seq := n.GetSequence()
	s.mu.Lock()
	if seq == 0 || seq > s.lastSent {
		last := s.lastSent
		s.mu.Unlock()
		return status.Errorf(codes.InvalidArgument, "nack for sequence %d, but the messages sent have sequences 1 to %d", seq, last)
	}
	if s.lastNack != nil && seq <= s.lastNack.GetSequence() {
		s.mu.Unlock()
		return nil // already recorded
	}
	s.nacks++
	s.lastNack = &edgesyncv1.NackRecord{Sequence: seq, Object: n.GetObject(), Reason: n.GetReason(), Time: timestamppb.Now()}
	s.mu.Unlock()
	s.srv.metrics.nacked.WithLabelValues(kindLabel(n.GetObject().GetKind())).Inc()
	s.srv.log.Warn("edge could not apply object",
		zap.String("node", s.node), zap.Uint64("sequence", seq),
		zap.Stringer("kind", n.GetObject().GetKind()), zap.String("namespace", n.GetObject().GetNamespace()),
		zap.String("name", n.GetObject().GetName()), zap.String("resource_version", n.GetObject().GetResourceVersion()),
		zap.String("reason", n.GetReason()))
	return nil
}

// pushControl queues a control message; the window does not hold it back.
func (s *session) pushControl(msg *edgesyncv1.SyncResponse) {
	if s.ctx.Err() != nil {
		return // the edge sends unanswered reports again
	}
	s.mu.Lock()
	full := len(s.control) >= maxControl
	if !full {
		s.control = append(s.control, msg)
	}
	answering := s.answering
	s.mu.Unlock()
	if full {
		s.end(status.Errorf(codes.ResourceExhausted, "%d report answers wait unread; read the stream", maxControl))
		return
	}
	if !answering { // else recvLoop sends it when HandleReport returns
		s.signal()
	}
}

// sendAnswers sends the control messages waiting, unless sendLoop is
// sending, which then sends them too.
func (s *session) sendAnswers() {
	if !s.sendMu.TryLock() {
		s.signal() // sendLoop may be past its last look at the queue
		return
	}
	defer s.sendMu.Unlock()
	if err := s.sendAll(s.nextControl); err != nil {
		s.end(err)
	}
}

// sendAll sends what next gives until it gives nothing; the caller holds
// sendMu.
func (s *session) sendAll(next func() (any, prometheus.Counter)) error {
	for {
		msg, sent := next()
		if msg == nil {
			return nil
		}
		if s.ctx.Err() != nil {
			return nil
		}
		if err := s.stream.SendMsg(msg); err != nil {
			return fmt.Errorf("send to node %q: %w", s.node, err)
		}
		sent.Inc()
	}
}

// queueDifference queues what the node should hold and the edge does not
// hold at that version, and deletes for what the edge holds and should not.
// Whatever is already queued was published later and stays.
func (s *session) queueDifference() (int, error) {
	desired, err := s.srv.ctrls.Desired(s.node)
	if err != nil {
		return 0, err
	}
	held := s.queue.Held()
	queued := 0
	want := make(map[feed.Key]bool, len(desired))
	for _, obj := range desired {
		if obj == nil || obj.Deleted {
			continue
		}
		want[obj.Key] = true
		if h, ok := held[obj.Key]; ok && h.ResourceVersion == obj.ResourceVersion {
			continue
		}
		if s.queue.Offer(obj) {
			queued++
		}
	}
	for key, h := range held {
		if want[key] {
			continue
		}
		tomb, err := s.srv.ctrls.Tombstone(key, h.UID)
		if err != nil {
			s.srv.log.Warn("no tombstone for object the edge holds", zap.String("node", s.node), zap.Stringer("key", key), zap.Error(err))
			continue
		}
		if tomb == nil {
			continue // the edge keeps it until a newer version is published
		}
		if s.queue.Offer(tomb) {
			queued++
		}
	}
	if queued > 0 {
		s.signal()
	}
	return queued, nil
}

// sendLoop sends whatever the session has to send, as the window allows,
// and returns when nothing is left (signal starts it again), when the
// session ends, or when a send fails (which ends the session).
func (s *session) sendLoop() {
	defer s.srv.wg.Done()
	for {
		s.pending.Store(false)
		s.sendMu.Lock()
		err := s.sendAll(s.next)
		s.sendMu.Unlock()
		if err != nil {
			s.end(err)
			s.sending.Store(false)
			return
		}
		s.sending.Store(false)
		// A signal after the last look at the queue set pending: send
		// again, unless that signal started a sender of its own.
		if s.ctx.Err() != nil || !s.pending.Load() || !s.sending.CompareAndSwap(false, true) {
			return
		}
	}
}

// next picks the next message to send, numbering it: control messages
// first, then SyncComplete once the initial objects are out, then objects
// while the window has room. It returns nil when there is nothing to send,
// and otherwise the counter of messages sent of its kind.
func (s *session) next() (any, prometheus.Counter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.control) > 0 {
		return s.popControl()
	}
	if s.initialQueued && !s.syncComplete && !s.queue.Pending(s.initialMark) {
		s.syncComplete = true
		return s.number(&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_SyncComplete{SyncComplete: &edgesyncv1.SyncComplete{
			ObjectsSent: s.initialApplied, ObjectsDeleted: s.initialDeleted,
		}}}), s.srv.metrics.sentSyncComplete
	}
	if len(s.inflight) < s.srv.opts.AckWindow {
		return s.nextObjects() // batch.go
	}
	return nil, nil
}

// nextControl is next for control messages only.
func (s *session) nextControl() (any, prometheus.Counter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.control) == 0 {
		return nil, nil
	}
	return s.popControl()
}

// popControl numbers and returns the oldest control message; the caller
// holds mu and there is one.
func (s *session) popControl() (any, prometheus.Counter) {
	msg := s.control[0]
	s.control[0] = nil
	s.control = s.control[1:]
	counter := s.srv.metrics.sentStatusResult
	switch {
	case msg.GetWelcome() != nil:
		counter = s.srv.metrics.sentWelcome
	case msg.GetTunnelOpen() != nil:
		counter = s.srv.metrics.sentTunnelOpen
	case msg.GetRouteDelivery() != nil, msg.GetRouteSubscriptions() != nil:
		counter = s.srv.metrics.sentRoute
	}
	return s.number(msg), counter
}

func (s *session) number(msg *edgesyncv1.SyncResponse) *edgesyncv1.SyncResponse {
	s.lastSent++
	s.messagesSent++
	msg.Sequence = s.lastSent
	return msg
}

// view describes the session for AdminService.
func (s *session) view() *edgesyncv1.Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := &edgesyncv1.Session{
		NodeName:            s.node,
		SessionId:           s.id,
		ServerId:            s.srv.opts.ServerID,
		PeerAddress:         s.peer,
		AgentVersion:        s.agentVersion,
		ConnectedTime:       timestamppb.New(s.connected),
		QueueDepth:          uint32(s.queue.Len()),
		Unacknowledged:      uint32(len(s.inflight)),
		LastSentSequence:    s.lastSent,
		LastAckedSequence:   s.lastAcked,
		InitialSyncComplete: s.syncComplete,
		MessagesSent:        s.messagesSent,
		Nacks:               s.nacks,
		LastNack:            s.lastNack,
	}
	if !s.lastAckTime.IsZero() {
		v.LastAckTime = timestamppb.New(s.lastAckTime)
	}
	if !s.lastHeartbeat.IsZero() {
		v.LastHeartbeatTime = timestamppb.New(s.lastHeartbeat)
	}
	return v
}
