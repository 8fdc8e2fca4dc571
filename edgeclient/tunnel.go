package edgeclient

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// tunnelChunk is the most bytes one Tunnel message carries.
const tunnelChunk = 32 << 10

// tunnels serves one session's TunnelOpen requests: each opens a
// TunnelService stream on the session's connection and hands its bytes,
// as one connection, to an HTTP server running Config.TunnelHandler (see
// api/edgesync/v1/tunnel.proto).
type tunnels struct {
	log     *zap.Logger
	client  edgesyncv1.TunnelServiceClient
	ctx     context.Context
	cancel  context.CancelFunc
	lis     *pipeListener
	http    *http.Server
	served  chan struct{} // closed when http.Serve returns
	started bool          // http.Serve runs
	wg      sync.WaitGroup
}

// noHandler answers every tunneled request of an agent without a
// TunnelHandler.
var noHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "this edge agent does not serve the kubelet API (logs, exec, attach, port-forward)", http.StatusNotImplemented)
})

func (c *Client) newTunnels(ctx context.Context, cc grpc.ClientConnInterface) *tunnels {
	h := c.cfg.TunnelHandler
	if h == nil {
		h = noHandler
	}
	t := &tunnels{
		log:    c.log.Named("tunnel"),
		client: edgesyncv1.NewTunnelServiceClient(cc),
		lis:    newPipeListener(),
		served: make(chan struct{}),
	}
	t.ctx, t.cancel = context.WithCancel(ctx)
	t.http = &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, ErrorLog: zap.NewStdLog(t.log.WithOptions(zap.IncreaseLevel(zap.WarnLevel)))}
	// One request per tunnel: answers carry "Connection: close".
	t.http.SetKeepAlivesEnabled(false)
	return t
}

// close ends every tunnel and waits for them.
func (t *tunnels) close() {
	t.cancel()
	if t.started {
		_ = t.http.Close()
		<-t.served
	}
	t.wg.Wait()
}

// open opens the tunnel id in the background. The HTTP server starts at
// the session's first tunnel, so that sessions without any cost nothing.
// open and close are called from one goroutine at a time.
func (t *tunnels) open(id string) {
	if !t.started {
		t.started = true
		go func() {
			defer close(t.served)
			_ = t.http.Serve(t.lis)
		}()
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		if err := t.serve(id); err != nil && t.ctx.Err() == nil {
			t.log.Info("tunnel failed", zap.Error(err))
		}
	}()
}

// serve carries one tunnel: this goroutine is the stream's only Send
// caller (bytes the handler writes), a second one its only Recv caller
// (bytes for the handler). The pipe between them and the handler is
// unbuffered, so a slow side holds the other back through gRPC's flow
// control.
func (t *tunnels) serve(id string) error {
	stream, err := t.client.Tunnel(t.ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&edgesyncv1.TunnelRequest{TunnelId: id}); err != nil {
		_, err = stream.Recv() // the status says why
		return err
	}
	local, remote := net.Pipe()
	defer remote.Close()
	if err := t.lis.deliver(t.ctx, local); err != nil {
		return err
	}
	received := make(chan error, 1)
	go func() {
		defer remote.Close() // the server ended the stream: the connection is over
		for {
			msg, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				received <- err
				return
			}
			if _, err := remote.Write(msg.GetData()); err != nil {
				received <- nil // the handler closed the connection
				return
			}
		}
	}()
	buf := make([]byte, tunnelChunk)
	for {
		n, rerr := remote.Read(buf)
		if n > 0 {
			if err := stream.Send(&edgesyncv1.TunnelRequest{Data: buf[:n]}); err != nil {
				break // Recv tells why
			}
		}
		if rerr != nil {
			break
		}
	}
	// The handler closed the connection (or the server ended the stream):
	// half-close, and the server ends the stream.
	_ = stream.CloseSend()
	return <-received
}

// pipeListener is a net.Listener whose connections are the tunnels'.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

// deliver hands c to Accept.
func (l *pipeListener) deliver(ctx context.Context, c net.Conn) error {
	select {
	case l.conns <- c:
		return nil
	case <-l.closed:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "tunnel" }
