package edgeclient

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/pki"
)

// fakeServer speaks the server side of the protocol simply enough to test
// the client alone, over real mTLS on a loopback port: it sends the
// difference on connect, then live changes, and answers every report.
type fakeServer struct {
	edgesyncv1.UnimplementedSyncServiceServer
	t      *testing.T
	ca     *pki.CA
	dir    string
	caFile string
	addr   string
	lis    net.Listener
	srv    *grpc.Server

	mu       sync.Mutex // guards the fields below
	desired  map[store.Key]*fakeObject
	streams  map[int]*fakeStream
	nextID   int
	hellos   []*edgesyncv1.Hello
	serials  []string // client certificate serial of each stream
	reports  []*edgesyncv1.SyncRequest
	nacks    []*edgesyncv1.Nack
	applies  int // APPLY events sent
	acked    uint64
	ackMsgs  int    // Ack messages received
	sent     uint64 // sequence of the last message sent on the newest stream
	changed  chan struct{}
	refuse   codes.Code // answer reports with this code
	noAnswer bool       // leave reports unanswered
	maxBytes uint32     // Welcome.max_message_bytes
	// answerFor, when set, decides the code of each report instead of
	// refuse; it is called with mu held.
	answerFor func(*edgesyncv1.SyncRequest) codes.Code
	// refuseStreams, when set, ends every new stream with it after Hello;
	// refused counts those streams.
	refuseStreams error
	refused       int
}

type fakeObject struct {
	uid, rv string
	msg     *edgesyncv1.SyncResponse
}

type fakeStream struct {
	cancel  context.CancelFunc
	updates chan store.Key
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	ca, err := pki.NewCA("fake-ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := &fakeServer{t: t, ca: ca, dir: dir, caFile: filepath.Join(dir, "ca.crt"),
		desired: map[store.Key]*fakeObject{}, streams: map[int]*fakeStream{}, changed: make(chan struct{})}
	if err := ca.KeyPair().WriteFiles(f.caFile, filepath.Join(dir, "ca.key"), false); err != nil {
		t.Fatal(err)
	}
	f.lis, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = f.lis.Addr().String()
	f.serve()
	t.Cleanup(f.stop)
	return f
}

func (f *fakeServer) serve() {
	kp, err := f.ca.IssueServer([]string{"127.0.0.1"})
	if err != nil {
		f.t.Fatal(err)
	}
	cert, err := kp.TLSCertificate()
	if err != nil {
		f.t.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: f.ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert})
	f.srv = grpc.NewServer(grpc.Creds(creds))
	edgesyncv1.RegisterSyncServiceServer(f.srv, f)
	lis := f.lis
	go f.srv.Serve(lis)
}

// stop shuts the server down; restart brings it back on the same address.
func (f *fakeServer) stop() {
	f.srv.Stop()
}

func (f *fakeServer) restart() {
	var err error
	f.lis, err = net.Listen("tcp", f.addr)
	if err != nil {
		f.t.Fatal(err)
	}
	f.serve()
}

// nodeFiles issues a node certificate and writes it where a Config points.
func (f *fakeServer) nodeFiles(node string) (certFile, keyFile string) {
	f.t.Helper()
	certFile, keyFile = filepath.Join(f.dir, node+".crt"), filepath.Join(f.dir, node+".key")
	kp, err := f.ca.IssueNode(node)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := kp.WriteFiles(certFile, keyFile, true); err != nil {
		f.t.Fatal(err)
	}
	return certFile, keyFile
}

func (f *fakeServer) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// waitFor waits until cond holds under f.mu.
func (f *fakeServer) waitFor(ctx context.Context, what string, cond func() bool) {
	f.t.Helper()
	for {
		f.mu.Lock()
		ok, ch := cond(), f.changed
		f.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			f.t.Fatalf("waiting for %s: %v", what, ctx.Err())
		}
	}
}

// set makes the node hold obj (nil deletes it) and tells connected streams.
func (f *fakeServer) set(key store.Key, obj *fakeObject) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if obj == nil {
		delete(f.desired, key)
	} else {
		f.desired[key] = obj
	}
	for _, s := range f.streams {
		select {
		case s.updates <- key:
		default:
			s.cancel() // a slow test client; it resyncs
		}
	}
}

// kill ends every stream, as a broken link would.
func (f *fakeServer) kill() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.streams {
		s.cancel()
	}
}

func (f *fakeServer) tombstone(key store.Key) *edgesyncv1.SyncResponse {
	o := podObject(key.Namespace, key.Name, "", "", "")
	o.msg.GetPodEvent().Type = edgesyncv1.EventType_EVENT_TYPE_DELETE
	return o.msg
}

func (f *fakeServer) Sync(stream grpc.BidiStreamingServer[edgesyncv1.SyncRequest, edgesyncv1.SyncResponse]) error {
	p, _ := peer.FromContext(stream.Context())
	leaf := p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0]
	node, _ := pki.NodeName(leaf)
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello.GetNodeName() != node {
		return status.Errorf(codes.PermissionDenied, "node %q may not act as %q", node, hello.GetNodeName())
	}
	f.mu.Lock()
	refuse := f.refuseStreams
	if refuse != nil {
		f.refused++
		f.notify()
	}
	f.mu.Unlock()
	if refuse != nil {
		return refuse
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	fs := &fakeStream{cancel: cancel, updates: make(chan store.Key, 1024)}
	f.mu.Lock()
	id := f.nextID
	f.nextID++
	f.streams[id] = fs
	f.hellos = append(f.hellos, hello)
	f.serials = append(f.serials, leaf.SerialNumber.String())
	held := map[store.Key]*edgesyncv1.ObjectRef{}
	for _, r := range hello.GetHeldObjects() {
		held[store.Key{Kind: r.GetKind(), Namespace: r.GetNamespace(), Name: r.GetName()}] = r
	}
	var initial []*edgesyncv1.SyncResponse
	for k, o := range f.desired {
		if r := held[k]; r == nil || r.GetUid() != o.uid || r.GetResourceVersion() != o.rv {
			initial = append(initial, o.msg)
			f.applies++
		}
	}
	var deletes uint32
	for k := range held {
		if f.desired[k] == nil {
			initial = append(initial, f.tombstone(k))
			deletes++
		}
	}
	f.notify()
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.streams, id)
		f.notify()
		f.mu.Unlock()
	}()

	results := make(chan *edgesyncv1.StatusResult, 64)
	recvErr := make(chan error, 1)
	go func() { recvErr <- f.receive(stream, results) }()

	f.mu.Lock()
	welcome := &edgesyncv1.Welcome{
		SessionId: fmt.Sprint("s", id), ServerId: "fake", HeartbeatInterval: durationpb.New(time.Hour), AckWindow: 8,
		MaxMessageBytes: f.maxBytes,
	}
	f.mu.Unlock()
	var seq uint64
	send := func(m *edgesyncv1.SyncResponse) error {
		seq++
		out := &edgesyncv1.SyncResponse{Sequence: seq, Message: m.GetMessage()}
		f.mu.Lock()
		f.sent = seq
		f.mu.Unlock()
		return stream.Send(out)
	}
	if err := send(&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	for _, m := range initial {
		if err := send(m); err != nil {
			return err
		}
	}
	if err := send(&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_SyncComplete{SyncComplete: &edgesyncv1.SyncComplete{
		ObjectsSent: uint32(len(initial)) - deletes, ObjectsDeleted: deletes,
	}}}); err != nil {
		return err
	}
	for {
		var m *edgesyncv1.SyncResponse
		select {
		case <-ctx.Done():
			return status.Error(codes.Unavailable, "killed by the test")
		case err := <-recvErr:
			return err
		case r := <-results:
			m = &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_StatusResult{StatusResult: r}}
		case k := <-fs.updates:
			f.mu.Lock()
			if o := f.desired[k]; o != nil {
				m = o.msg
				f.applies++
			} else {
				m = f.tombstone(k)
			}
			f.mu.Unlock()
		}
		if err := send(m); err != nil {
			return err
		}
	}
}

func (f *fakeServer) receive(stream grpc.BidiStreamingServer[edgesyncv1.SyncRequest, edgesyncv1.SyncResponse], results chan<- *edgesyncv1.StatusResult) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		f.mu.Lock()
		var answer *edgesyncv1.StatusResult
		switch req.GetMessage().(type) {
		case *edgesyncv1.SyncRequest_Ack:
			f.acked = req.GetAck().GetSequence()
			f.ackMsgs++
		case *edgesyncv1.SyncRequest_Nack:
			f.nacks = append(f.nacks, req.GetNack())
		case *edgesyncv1.SyncRequest_Hello:
			f.mu.Unlock()
			return status.Error(codes.FailedPrecondition, "second hello")
		default:
			if req.GetRequestId() == 0 {
				f.mu.Unlock()
				return status.Error(codes.InvalidArgument, "report without request_id")
			}
			f.reports = append(f.reports, req)
			if !f.noAnswer {
				code := f.refuse
				if f.answerFor != nil {
					code = f.answerFor(req)
				}
				answer = &edgesyncv1.StatusResult{RequestId: req.GetRequestId(), Code: int32(code)}
			}
		}
		f.notify()
		f.mu.Unlock()
		if answer != nil {
			select {
			case results <- answer:
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
	}
}
