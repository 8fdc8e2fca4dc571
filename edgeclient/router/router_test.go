package router

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/repo"
)

// mosquitto runs Debian's broker on a free port until the test ends,
// stopped by its pid.
func mosquitto(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/mosquitto"); err != nil {
			repo.Missing(t, "mosquitto", "install Debian's mosquitto (`make apt-deps`)")
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "listener %d 127.0.0.1\nallow_anonymous true\n", port), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	for deadline := time.Now().Add(20 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto does not accept connections: %v", err)
		}
		select {
		case <-time.After(50 * time.Millisecond): // polling a port that opens on its own
		case <-t.Context().Done():
		}
	}
	return "tcp://" + addr
}

type fakeSender struct {
	mu      sync.Mutex
	answers []*edgesyncv1.RouteResult
	more    chan struct{}
}

func (f *fakeSender) AnswerRoute(res *edgesyncv1.RouteResult) {
	f.mu.Lock()
	f.answers = append(f.answers, res)
	f.mu.Unlock()
	select {
	case f.more <- struct{}{}:
	default:
	}
}

func (f *fakeSender) SendRoute(*edgesyncv1.RouteMessage) (*edgeclient.Report, error) {
	return nil, fmt.Errorf("not in this test")
}

func (f *fakeSender) wait(t *testing.T, n int) []*edgesyncv1.RouteResult {
	t.Helper()
	for {
		f.mu.Lock()
		got := append([]*edgesyncv1.RouteResult(nil), f.answers...)
		f.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-f.more:
		case <-time.After(20 * time.Second):
			t.Fatalf("%d answers, want %d", len(got), n)
		}
	}
}

func TestDuplicatesPublishedOnceAndRequestsAnswered(t *testing.T) {
	broker := mosquitto(t)
	received := make(chan string, 16)
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("test-sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer sub.Disconnect(100)
	if tok := sub.Subscribe("t/#", 1, func(_ mqtt.Client, m mqtt.Message) { received <- string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), r.Header.Get("X-Test"))
	}))
	defer app.Close()
	_, port, _ := net.SplitHostPort(app.Listener.Addr().String())
	p, _ := strconv.Atoi(port)

	r := New(Config{Broker: broker, ClientID: "test-edge"})
	s := &fakeSender{more: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, s) }()
	defer func() { cancel(); <-done }()

	ttl := durationpb.New(time.Minute)
	first := &edgesyncv1.RouteDelivery{Id: "1", Target: edgesyncv1.RouteTarget_ROUTE_TARGET_EVENTBUS, Topic: "t/a", Body: []byte("one"), Ttl: ttl}
	r.Deliver(first)
	r.Deliver(&edgesyncv1.RouteDelivery{Id: "2", Target: edgesyncv1.RouteTarget_ROUTE_TARGET_EVENTBUS, Topic: "t/a", Body: []byte("two"), Ttl: ttl})
	got := s.wait(t, 2)
	if got[0].GetId() != "1" || got[1].GetId() != "2" || got[0].GetError() != "" {
		t.Fatalf("answers %v", got)
	}
	r.Deliver(first) // sent again after a reconnect
	if got = s.wait(t, 3); got[2].GetId() != "1" || got[2].GetError() != "" {
		t.Fatalf("a duplicate was answered %v, want the first outcome again", got[2])
	}
	r.Deliver(&edgesyncv1.RouteDelivery{Id: "3", Target: edgesyncv1.RouteTarget_ROUTE_TARGET_SERVICEBUS, Port: uint32(p), Method: "PUT", Path: "/x?y=1",
		Headers: []*edgesyncv1.RouteHeader{{Name: "X-Test", Values: []string{"h"}}}, Ttl: ttl})
	got = s.wait(t, 4)
	if a := got[3]; a.GetStatusCode() != http.StatusTeapot || string(a.GetBody()) != "PUT /x?y=1 h" {
		t.Fatalf("servicebus answer %v", a)
	}
	var msgs []string
	for len(msgs) < 2 {
		select {
		case m := <-received:
			msgs = append(msgs, m)
		case <-time.After(10 * time.Second):
			t.Fatalf("the subscriber got %q", msgs)
		}
	}
	select {
	case m := <-received:
		t.Fatalf("a duplicate was published again: %q after %q", m, msgs)
	case <-time.After(200 * time.Millisecond): // nothing more may arrive
	}
	if fmt.Sprint(msgs) != "[one two]" {
		t.Fatalf("published %q, want [one two] in order", msgs)
	}
	if st := r.State(); st.Published != 2 || st.Duplicates != 1 || st.Requests != 1 {
		t.Errorf("state %+v", st)
	}
}

// TestBurstPublishedInOrder: a burst of deliveries (a node back online, a
// busy rule) reaches the subscriber in the order the server sent it,
// although publishes do not wait for one another's acknowledgement, and
// each is answered once, in that order.
func TestBurstPublishedInOrder(t *testing.T) {
	broker := mosquitto(t)
	const n = 500
	received := make(chan string, n)
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("test-burst-sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer sub.Disconnect(100)
	if tok := sub.Subscribe("burst", 1, func(_ mqtt.Client, m mqtt.Message) { received <- string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	r := New(Config{Broker: broker, ClientID: "test-burst-edge"})
	s := &fakeSender{more: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, s) }()
	defer func() { cancel(); <-done }()

	ttl := durationpb.New(time.Minute)
	for i := range n {
		r.Deliver(&edgesyncv1.RouteDelivery{Id: strconv.Itoa(i), Target: edgesyncv1.RouteTarget_ROUTE_TARGET_EVENTBUS, Topic: "burst", Body: []byte(strconv.Itoa(i)), Ttl: ttl})
	}
	for i, a := range s.wait(t, n) {
		if a.GetId() != strconv.Itoa(i) || a.GetError() != "" {
			t.Fatalf("answer %d is %v, want id %d published", i, a, i)
		}
	}
	for i := range n {
		select {
		case m := <-received:
			if m != strconv.Itoa(i) {
				t.Fatalf("message %d at the subscriber is %q: out of order", i, m)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("the subscriber got %d of %d messages", i, n)
		}
	}
	if st := r.State(); st.Published != n || st.PublishFailed != 0 {
		t.Errorf("state %+v, want %d published", st, n)
	}
}
