// Package server is the edgesync sync server: it holds one Sync stream per
// edge node over mutual TLS, keeps a latest-wins queue and an
// acknowledgement window per session, answers AdminService, gRPC health and
// reflection, and serves metrics and health over a separate HTTP listener.
//
// The server knows nothing about Kubernetes. Controllers reach it through
// package feed: they Publish encoded objects for a node (Server implements
// feed.Publisher), and the server asks them what a node should hold and
// hands them the node's reports (feed.Controllers, given to Serve). When the
// controllers implement feed.Admitter, a node they refuse gets no session;
// Server implements feed.SessionEnder so that they can end one. With several
// replicas the controllers also implement feed.Claimer (a session's
// reports are handed over only once this replica owns the node; its
// downstream sync does not wait) and feed.Directory (AdminService
// then answers for every replica's nodes).
//
// OpenTunnel asks a node, on its session, to open a TunnelService stream;
// Options.Tunnel serves those streams on the same port (package
// server/tunnel, which carries kubectl logs/exec/port-forward to edges).
//
// Options.Bootstrap serves BootstrapService on the same port (package
// server/bootstrap: nodes join with a token and renew their certificates).
// Its joining calls are the only ones answered without a client
// certificate. The TLS files are re-read when they change (package
// server/certreload), so replacing them drops no session.
//
//	ctrls := controllers.New(...)
//	srv, err := server.New(opts)
//	go ctrls.Run(ctx, srv)           // the controllers publish to srv
//	err = srv.Serve(ctx, lis, ctrls) // until ctx ends, then drains
//
// # Metrics
//
// Besides the grpc_server_* metrics of the go-grpc-middleware prometheus
// provider: edgesync_sessions_connected, edgesync_queue_depth (objects
// queued on this replica), edgesync_messages_sent_total{kind},
// edgesync_messages_acked_total{kind}, edgesync_messages_nacked_total{kind},
// edgesync_delivery_latency_seconds (queued until acknowledged),
// edgesync_upstream_results_total{kind,outcome} (answers to reports) and
// edgesync_sessions_ended_total{code}.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
	"github.com/edgesync/edgesync/server/frame"
)

// Transport sizes for edge connections. receiveWindow is HTTP/2's default
// window (gRPC's lower bound), set statically. readBufferSize is 0: gRPC
// then reads frames straight from the TLS connection, which buffers the
// record it decrypted anyway; a buffer of gRPC's own on top kept 8 KiB per
// idle session (of 78 in the density benchmark) for no saved syscall.
const (
	receiveWindow  = 64 << 10
	readBufferSize = 0
)

// EdgeTransportOptions are the gRPC transport settings of edge
// connections, for the server and for baselines measured against it.
//
// Edges send small reports: a static receive window keeps gRPC from
// answering every message with a window update and a bandwidth-probing
// ping (two extra frames, and syscalls, per heartbeat), and no read buffer
// of gRPC's own is kept (readBufferSize). The write buffer is
// taken from a shared pool while a connection writes and returned when it
// flushes: an idle session holds none (gRPC's default keeps 32 KiB per
// connection for its lifetime).
func EdgeTransportOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.StaticStreamWindowSize(receiveWindow),
		grpc.StaticConnWindowSize(receiveWindow),
		grpc.ReadBufferSize(readBufferSize),
		grpc.SharedWriteBuffer(true),
	}
}

// Server serves edge sessions. Create it with New, hand it to the
// controllers as their feed.Publisher, then call Serve once.
type Server struct {
	opts    Options
	log     *zap.Logger
	grpc    *grpc.Server
	health  *health.Server
	metrics *metrics

	serving atomic.Bool // Serve was called
	// cachesLoaded is the controllers' feed.Syncer channel, set by Serve
	// before it starts serving; nil when they do not have one.
	cachesLoaded <-chan struct{}
	ctrls        feed.Controllers
	admitter     feed.Admitter  // ctrls, when they admit nodes; set by Serve
	claimer      feed.Claimer   // ctrls, when replicas claim nodes; set by Serve
	directory    feed.Directory // ctrls, when they know every node's replica; set by Serve
	wg           sync.WaitGroup // session goroutines

	mu       sync.RWMutex // guards sessions and draining
	sessions map[string]*session
	draining bool
}

var (
	_ feed.Publisher    = (*Server)(nil)
	_ feed.SessionEnder = (*Server)(nil)
)

// New builds a server from opts. It does not listen: call Serve.
func New(opts Options) (*Server, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("server options: %w", err)
	}
	tlsCfg, err := opts.serverTLS()
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, log: opts.Logger, sessions: make(map[string]*session)}
	if s.metrics, err = newMetrics(opts.Registerer, s); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	grpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	if err := opts.Registerer.Register(grpcMetrics); err != nil {
		return nil, fmt.Errorf("register gRPC metrics: %w", err)
	}

	// Health checks and reflection are frequent and uninteresting: only
	// Sync and AdminService calls are logged.
	logged := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.Service == edgesyncv1.SyncService_ServiceDesc.ServiceName || c.Service == edgesyncv1.AdminService_ServiceDesc.ServiceName ||
			c.Service == edgesyncv1.BootstrapService_ServiceDesc.ServiceName
	})
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithFieldsFromContext(logFields),
		logging.WithLevels(codeToLevel),
	}
	recoverOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(s.recovered)}
	s.grpc = grpc.NewServer(append(EdgeTransportOptions(),
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.ForceServerCodecV2(frame.NewCodec()),
		grpc.MaxRecvMsgSize(opts.MaxMessageBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: opts.Keepalive.Time, Timeout: opts.Keepalive.Timeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: opts.Keepalive.MinTime, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(
			grpcMetrics.UnaryServerInterceptor(),
			selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(zapLogger(s.log), logOpts...), logged),
			s.unaryNotRevoked,
			auth.UnaryServerInterceptor(authenticated),
			recovery.UnaryServerInterceptor(recoverOpts...),
		),
		grpc.ChainStreamInterceptor(
			grpcMetrics.StreamServerInterceptor(),
			selector.StreamServerInterceptor(logging.StreamServerInterceptor(zapLogger(s.log), logOpts...), logged),
			s.streamNotRevoked,
			auth.StreamServerInterceptor(authenticated),
			recovery.StreamServerInterceptor(recoverOpts...),
		),
	)...)
	edgesyncv1.RegisterSyncServiceServer(s.grpc, &syncService{srv: s})
	edgesyncv1.RegisterAdminServiceServer(s.grpc, &adminService{srv: s})
	if opts.Bootstrap != nil {
		edgesyncv1.RegisterBootstrapServiceServer(s.grpc, opts.Bootstrap)
	}
	if opts.Tunnel != nil {
		edgesyncv1.RegisterTunnelServiceServer(s.grpc, opts.Tunnel)
	}
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	grpcMetrics.InitializeMetrics(s.grpc)
	s.setServing(false) // until Serve runs and the controllers are ready
	return s, nil
}

// Serve accepts edges on lis until ctx ends, then stops gracefully: it
// stops accepting, sends GOAWAY, ends every session with UNAVAILABLE so
// that edges dial again (possibly another replica), and waits up to
// Options.DrainTimeout before closing what remains. It returns nil after a
// shutdown caused by ctx, and an error if serving failed. Serve may be
// called once.
func (s *Server) Serve(ctx context.Context, lis net.Listener, ctrls feed.Controllers) error {
	if ctrls == nil {
		return errors.New("serve: no controllers")
	}
	if s.serving.Swap(true) {
		return errors.New("serve: called twice")
	}
	s.ctrls = ctrls
	s.admitter, _ = ctrls.(feed.Admitter)
	s.claimer, _ = ctrls.(feed.Claimer)
	s.directory, _ = ctrls.(feed.Directory)
	// Controllers that load caches first are served only once loaded: until
	// then health checks answer NOT_SERVING and /readyz 503.
	var synced <-chan struct{} // nil: never fires
	if syncer, ok := ctrls.(feed.Syncer); ok {
		synced = syncer.Synced()
		s.cachesLoaded = synced
	}

	grpcDone := make(chan error, 1)
	go func() { grpcDone <- s.grpc.Serve(lis) }()
	var (
		httpSrv  *http.Server
		httpDone chan error // nil without an HTTP listener: never ready
	)
	if s.opts.HTTPListener != nil {
		httpSrv = &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
		httpDone = make(chan error, 1)
		go func() { httpDone <- httpSrv.Serve(s.opts.HTTPListener) }()
	}
	if synced == nil {
		s.setServing(true)
	}
	s.log.Info("serving", zap.String("server_id", s.opts.ServerID), zap.Stringer("address", lis.Addr()))
	sweep := time.NewTicker(s.opts.HeartbeatTimeout / 3)
	defer sweep.Stop()

	var serveErr error
wait:
	for {
		select {
		case <-synced:
			s.setServing(true)
			synced = nil
		case now := <-sweep.C:
			s.endSilentSessions(now)
		case <-ctx.Done():
			break wait
		case err := <-grpcDone:
			serveErr = fmt.Errorf("serve gRPC: %w", err)
			grpcDone <- nil // for the wait below
			break wait
		case err := <-httpDone:
			serveErr = fmt.Errorf("serve HTTP: %w", err)
			httpDone <- nil // for the wait below
			break wait
		}
	}
	s.shutdown()
	if httpSrv != nil {
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.DrainTimeout)
		if err := httpSrv.Shutdown(shutdownCtx); err != nil {
			httpSrv.Close()
		}
		cancel()
		<-httpDone
	}
	<-grpcDone
	s.wg.Wait()
	s.log.Info("stopped", zap.String("server_id", s.opts.ServerID))
	return serveErr
}

// loaded reports whether the controllers' caches have loaded (always, for
// controllers that do not say).
// endSilentSessions ends the sessions from which nothing arrived for
// HeartbeatTimeout before now. A session in the middle of a send is left
// alone: its receiving goroutine may be the one sending, to an edge on a
// slow link, with the edge's messages waiting to be read.
func (s *Server) endSilentSessions(now time.Time) {
	for _, sess := range s.all() {
		silent := now.Sub(time.Unix(0, sess.lastReceived.Load()))
		if silent <= s.opts.HeartbeatTimeout {
			continue
		}
		if !sess.sendMu.TryLock() {
			continue
		}
		sess.sendMu.Unlock()
		sess.end(status.Errorf(codes.Unavailable,
			"nothing received from node %q for %s (heartbeat timeout %s); an edge must send a heartbeat every %s, as Welcome says",
			sess.node, silent.Round(100*time.Millisecond), s.opts.HeartbeatTimeout, s.opts.HeartbeatInterval))
	}
}

func (s *Server) loaded() bool {
	if s.cachesLoaded == nil {
		return true
	}
	select {
	case <-s.cachesLoaded:
		return true
	default:
		return false
	}
}

// acceptingEdges reports whether Serve runs, is not draining, and the
// controllers can answer: what /readyz tells load balancers.
func (s *Server) acceptingEdges() bool {
	s.mu.RLock()
	draining := s.draining
	s.mu.RUnlock()
	return s.serving.Load() && !draining && s.loaded()
}

// setServing sets the gRPC health status of every service.
func (s *Server) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, name := range []string{"", edgesyncv1.SyncService_ServiceDesc.ServiceName, edgesyncv1.AdminService_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(name, st)
	}
}

// shutdown drains: GOAWAY, end sessions, wait, then force.
func (s *Server) shutdown() {
	s.setServing(false)
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	all := s.all() // no session registers from now on

	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	bye := status.Error(codes.Unavailable, "server is shutting down; dial again")
	for _, sess := range all {
		sess.end(bye)
	}
	s.log.Info("draining", zap.Int("sessions", len(all)), zap.Duration("deadline", s.opts.DrainTimeout))
	timer := time.NewTimer(s.opts.DrainTimeout)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.log.Warn("drain deadline passed; closing remaining connections")
		s.grpc.Stop()
		<-stopped
	}
	s.health.Shutdown()
}

// ID returns the server id (Options.ServerID, or its default).
func (s *Server) ID() string { return s.opts.ServerID }

// Publish queues obj for node if node has a session here (feed.Publisher).
func (s *Server) Publish(node string, obj *feed.Object) {
	if obj == nil {
		return
	}
	s.mu.RLock()
	sess := s.sessions[node]
	s.mu.RUnlock()
	if sess != nil {
		sess.queue.Push(obj)
		sess.signal()
	}
}

// ErrNotConnected is returned by OpenTunnel for a node without a session
// on this replica.
var ErrNotConnected = errors.New("not connected")

// OpenTunnel asks node's edge, on its session here, to open the
// TunnelService stream tunnelID (SyncResponse.tunnel_open). It returns an
// error wrapping ErrNotConnected when node holds no session here.
func (s *Server) OpenTunnel(node, tunnelID string) error {
	sess := s.session(node)
	if sess == nil || sess.ctx.Err() != nil {
		return fmt.Errorf("node %q is %w to edgesync server %s (requests reach an edge node only while its agent is connected)", node, ErrNotConnected, s.opts.ServerID)
	}
	sess.pushControl(&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_TunnelOpen{TunnelOpen: &edgesyncv1.TunnelOpen{TunnelId: tunnelID}}})
	return nil
}

// EndSession ends node's session here, if it has one, with reason
// (feed.SessionEnder): its gRPC status, or UNAVAILABLE when it has none.
func (s *Server) EndSession(node string, reason error) {
	if sess := s.session(node); sess != nil && reason != nil {
		sess.end(controllerStatus(reason).Err())
	}
}

// admit asks the controllers whether node may hold a session; the error
// refuses the stream.
func (s *Server) admit(node string) error {
	if s.admitter == nil {
		return nil
	}
	if err := s.admitter.Admit(node); err != nil {
		return controllerStatus(err).Err()
	}
	return nil
}

// adopt offers the controllers what a connecting node holds, when they
// can take some of it over (feed.Adopter).
func (s *Server) adopt(node string, hello *edgesyncv1.Hello) {
	if a, ok := s.ctrls.(feed.Adopter); ok {
		a.Adopt(node, hello.GetHeldObjects())
	}
	if sub, ok := s.ctrls.(feed.Subscriber); ok {
		sub.Subscribe(node, hello.GetSubscriptions())
	}
}

// register makes sess the node's session, subscribing it to Publish. A
// previous session of the node ends with ABORTED.
func (s *Server) register(sess *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return status.Error(codes.Unavailable, "server is shutting down; dial again")
	}
	old := s.sessions[sess.node]
	if old == nil && len(s.sessions) >= s.opts.NodeLimit {
		return status.Errorf(codes.ResourceExhausted, "server %s holds its limit of %d sessions; dial another replica", s.opts.ServerID, s.opts.NodeLimit)
	}
	if old != nil {
		old.end(status.Error(codes.Aborted, "replaced by a newer stream"))
	}
	s.sessions[sess.node] = sess
	return nil
}

// unregister removes sess unless a newer session replaced it, and then
// tells the controllers that the node has gone.
func (s *Server) unregister(sess *session) {
	s.mu.Lock()
	current := s.sessions[sess.node] == sess
	if current {
		delete(s.sessions, sess.node)
	}
	s.mu.Unlock()
	if current {
		s.ctrls.SessionEnded(sess.node)
	}
}

func (s *Server) session(node string) *session {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sessions[node]
}

// all returns the sessions, unordered.
func (s *Server) all() []*session {
	s.mu.RLock()
	defer s.mu.RUnlock()
	all := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		all = append(all, sess)
	}
	return all
}

func (s *Server) sessionCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.sessions)
}

func (s *Server) queuedObjects() int {
	n := 0
	for _, sess := range s.all() {
		n += sess.queue.Len()
	}
	return n
}

// recovered turns a panic in a handler into INTERNAL, logged with the caller.
func (s *Server) recovered(ctx context.Context, p any) error {
	s.log.Error("panic in handler", append(zapFields(logFields(ctx)), zap.Any("panic", p), zap.Stack("stack"))...)
	return status.Error(codes.Internal, "internal server error; the server logged the details")
}

func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.opts.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.acceptingEdges() {
			http.Error(w, "not serving", http.StatusServiceUnavailable)
			return
		}
		if s.opts.Ready != nil {
			if err := s.opts.Ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if s.opts.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// codeToLevel keeps expected session ends (edge left, replaced, server
// shutting down, operator disconnect) at info.
func codeToLevel(code codes.Code) logging.Level {
	switch code {
	case codes.Canceled, codes.Aborted, codes.Unavailable:
		return logging.LevelInfo
	}
	return logging.DefaultServerCodeToLevel(code)
}

// zapLogger adapts zap to the go-grpc-middleware logging interface.
func zapLogger(l *zap.Logger) logging.Logger {
	l = l.WithOptions(zap.AddCallerSkip(1))
	return logging.LoggerFunc(func(_ context.Context, lvl logging.Level, msg string, fields ...any) {
		f := zapFields(fields)
		switch lvl {
		case logging.LevelDebug:
			l.Debug(msg, f...)
		case logging.LevelInfo:
			l.Info(msg, f...)
		case logging.LevelWarn:
			l.Warn(msg, f...)
		default:
			l.Error(msg, f...)
		}
	})
}

func zapFields(kv []any) []zap.Field {
	f := make([]zap.Field, 0, len(kv)/2)
	for i := logging.Fields(kv).Iterator(); i.Next(); {
		k, v := i.At()
		f = append(f, zap.Any(k, v))
	}
	return f
}

// toStatus maps an error that ends a stream to a gRPC status, in one place.
func toStatus(err error) error {
	switch {
	case err == nil, errors.Is(err, errEdgeClosed):
		return nil
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "stream canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	return status.Error(codes.Internal, err.Error())
}
