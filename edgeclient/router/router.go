// Package router is the edge side of KubeEdge's router (rules.kubeedge.io
// Rule and RuleEndpoint; sync.proto, "Routed messages"). It is an
// edgeclient.RouteHandler:
//
//   - eventbus deliveries are published on the node's MQTT broker, at QoS
//     1, in the order they arrive (so in order per rule), on one
//     connection with up to 32 unacknowledged: the broker forwards them in
//     that order, and a burst does not wait a round trip per message;
//   - servicebus deliveries become HTTP requests to 127.0.0.1:<port> of an
//     application on the node, whose answer goes back to the cloud caller;
//   - messages applications publish on the topics the cloud subscribes the
//     node to are sent up (edgeclient.Client.SendRoute).
//
// Deliveries are at least once: one the server sends again (its answer was
// lost with a stream) is recognized by its id and answered with the first
// outcome, not published twice. The MQTT client is
// github.com/eclipse/paho.mqtt.golang; it reconnects by itself and
// subscribes again.
package router

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Defaults.
const (
	DefaultBroker = "tcp://127.0.0.1:1883"
	// DefaultMaxUnanswered bounds the messages sent up and not yet
	// answered; beyond it new ones are dropped (State.Dropped).
	DefaultMaxUnanswered = 1000
	// maxAnswerBytes bounds an application's answer body.
	maxAnswerBytes = 3 << 20
	// remembered is how many delivery ids are remembered for duplicates.
	remembered     = 8192
	publishTimeout = 5 * time.Second
)

// Sender is what the router needs of the edgeclient.Client.
type Sender interface {
	AnswerRoute(res *edgesyncv1.RouteResult)
	SendRoute(msg *edgesyncv1.RouteMessage) (*edgeclient.Report, error)
}

// Config configures a Router.
type Config struct {
	// Broker is the MQTT broker's URL; DefaultBroker when empty.
	Broker string
	// ClientID is the MQTT client id; "edgesync-<node>" is a good one.
	ClientID string
	// Username and Password log in to the broker, when set.
	Username, Password string
	// AppHost is where servicebus applications listen; 127.0.0.1 when
	// empty.
	AppHost string
	// MaxUnanswered: DefaultMaxUnanswered when zero.
	MaxUnanswered int
	Logger        *zap.Logger
}

// State counts what the router did, for tests and status pages.
type State struct {
	Published, PublishFailed, Duplicates, Expired uint64
	Requests, RequestsFailed                      uint64
	SentUp, Dropped                               uint64
}

// Router is the edge's RouteHandler. Deliver and Subscribe never block.
type Router struct {
	cfg    Config
	log    *zap.Logger
	mqtt   mqtt.Client
	sender atomic.Pointer[senderBox]
	http   *http.Client

	mu      sync.Mutex // guards the fields below
	queue   []*delivery
	answers map[string]*edgesyncv1.RouteResult // outcomes by id; nil value: in progress
	order   []string                           // ids in answers, oldest first
	topics  map[string]bool
	wake    chan struct{}
	// up is closed while the broker connection is up, and replaced when
	// it is lost: publishes wait for it rather than queue in the client,
	// which would drop them at connect (clean session).
	up chan struct{}

	unanswered atomic.Int64
	state      struct {
		published, publishFailed, duplicates, expired, requests, requestsFailed, sentUp, dropped atomic.Uint64
	}
}

type senderBox struct{ Sender }

type delivery struct {
	d        *edgesyncv1.RouteDelivery
	deadline time.Time
}

// New returns a Router; Run connects it.
func New(cfg Config) *Router {
	if cfg.Broker == "" {
		cfg.Broker = DefaultBroker
	}
	if cfg.AppHost == "" {
		cfg.AppHost = "127.0.0.1"
	}
	if cfg.MaxUnanswered <= 0 {
		cfg.MaxUnanswered = DefaultMaxUnanswered
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	r := &Router{
		cfg: cfg, log: cfg.Logger,
		answers: map[string]*edgesyncv1.RouteResult{}, topics: map[string]bool{}, wake: make(chan struct{}, 1), up: make(chan struct{}),
		http: &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16}},
	}
	opts := mqtt.NewClientOptions().AddBroker(cfg.Broker).SetClientID(cfg.ClientID).
		SetUsername(cfg.Username).SetPassword(cfg.Password).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(time.Second).SetMaxReconnectInterval(10 * time.Second).
		SetCleanSession(true).SetOrderMatters(false).
		SetOnConnectHandler(func(mqtt.Client) { r.onConnect() }).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			r.mu.Lock()
			select {
			case <-r.up:
				r.up = make(chan struct{})
			default:
			}
			r.mu.Unlock()
			r.log.Warn("MQTT broker connection lost", zap.String("broker", cfg.Broker), zap.Error(err))
		})
	r.mqtt = mqtt.NewClient(opts)
	return r
}

// Run connects to the broker and publishes deliveries until ctx ends;
// answers and messages go through s (the edgeclient.Client).
func (r *Router) Run(ctx context.Context, s Sender) error {
	r.sender.Store(&senderBox{s})
	r.mqtt.Connect() // retries in the background until it connects
	defer r.mqtt.Disconnect(250)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { r.publishLoop(ctx) })
	<-ctx.Done()
	return nil
}

// State returns the counters.
func (r *Router) State() State {
	s := &r.state
	return State{
		Published: s.published.Load(), PublishFailed: s.publishFailed.Load(), Duplicates: s.duplicates.Load(), Expired: s.expired.Load(),
		Requests: s.requests.Load(), RequestsFailed: s.requestsFailed.Load(), SentUp: s.sentUp.Load(), Dropped: s.dropped.Load(),
	}
}

func (r *Router) answer(res *edgesyncv1.RouteResult) {
	if b := r.sender.Load(); b != nil {
		b.AnswerRoute(res)
	}
}

// Deliver takes one delivery (edgeclient.RouteHandler).
func (r *Router) Deliver(d *edgesyncv1.RouteDelivery) {
	id := d.GetId()
	r.mu.Lock()
	if res, seen := r.answers[id]; seen {
		r.mu.Unlock()
		r.state.duplicates.Add(1)
		if res != nil {
			r.answer(res)
		}
		return
	}
	r.remember(id, nil)
	dl := &delivery{d: d, deadline: time.Now().Add(d.GetTtl().AsDuration())}
	if d.GetTtl() == nil {
		dl.deadline = time.Now().Add(time.Minute)
	}
	if d.GetTarget() == edgesyncv1.RouteTarget_ROUTE_TARGET_SERVICEBUS {
		r.mu.Unlock()
		go r.request(dl)
		return
	}
	r.queue = append(r.queue, dl)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// remember records id's outcome (nil: in progress); the caller holds mu.
func (r *Router) remember(id string, res *edgesyncv1.RouteResult) {
	if _, ok := r.answers[id]; !ok {
		r.order = append(r.order, id)
		if len(r.order) > remembered {
			delete(r.answers, r.order[0])
			r.order = r.order[1:]
		}
	}
	r.answers[id] = res
}

func (r *Router) finish(res *edgesyncv1.RouteResult) {
	r.mu.Lock()
	if _, ok := r.answers[res.GetId()]; ok {
		r.answers[res.GetId()] = res
	}
	r.mu.Unlock()
	r.answer(res)
}

// publishLoop publishes deliveries in the order they arrived, up to
// maxPublishing of them unacknowledged: they leave on the one broker
// connection in that order and the broker forwards them in that order
// (MQTT's ordered topics), so a node's messages keep their order without
// a round trip to the broker for each. acknowledged answers them, in the
// same order.
func (r *Router) publishLoop(ctx context.Context) {
	sent := make(chan *publishing, maxPublishing)
	var wg sync.WaitGroup
	wg.Go(func() { r.acknowledged(ctx, sent) })
	defer func() { close(sent); wg.Wait() }()
	for {
		r.mu.Lock()
		batch := r.queue
		r.queue = nil
		r.mu.Unlock()
		for _, dl := range batch {
			if p := r.publish(dl); p != nil {
				select {
				case sent <- p:
				case <-ctx.Done():
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
	}
}

// maxPublishing bounds the publishes waiting for the broker's
// acknowledgement.
const maxPublishing = 32

// publishing is a publish waiting for the broker's acknowledgement, or
// (tok nil) one that could not be sent, with why.
type publishing struct {
	dl  *delivery
	tok mqtt.Token
	err string
}

// acknowledged answers each publish once the broker acknowledged it (or
// did not in time), in the order they were sent, until sent is closed or
// ctx ends (the stream the answers would go on is gone with it).
func (r *Router) acknowledged(ctx context.Context, sent <-chan *publishing) {
	for p := range sent {
		d := p.dl.d
		res := &edgesyncv1.RouteResult{Id: d.GetId(), Error: p.err}
		if p.tok != nil {
			wait := time.NewTimer(min(publishTimeout, time.Until(p.dl.deadline)))
			select {
			case <-p.tok.Done():
			case <-wait.C:
			case <-ctx.Done():
				wait.Stop()
				return
			}
			wait.Stop()
			select {
			case <-p.tok.Done():
				if err := p.tok.Error(); err != nil {
					res.Error = fmt.Sprintf("publish on %q to MQTT broker %s: %v", d.GetTopic(), r.cfg.Broker, err)
				}
			default:
				res.Error = fmt.Sprintf("MQTT broker %s did not acknowledge the publish on %q in time (is it running?)", r.cfg.Broker, d.GetTopic())
			}
		}
		if res.Error != "" {
			r.state.publishFailed.Add(1)
			r.log.Info("could not publish a routed message", zap.String("id", d.GetId()), zap.String("rule", d.GetRule()), zap.String("error", res.Error))
		} else {
			r.state.published.Add(1)
		}
		r.finish(res)
	}
}

// publish hands dl to the broker connection, once it is up, and returns
// what to wait for; nil when dl expired before (nobody waits for it).
func (r *Router) publish(dl *delivery) *publishing {
	d := dl.d
	if time.Now().After(dl.deadline) {
		r.state.expired.Add(1)
		r.mu.Lock()
		delete(r.answers, d.GetId()) // the server gave up on it too
		r.mu.Unlock()
		return nil
	}
	wait := time.NewTimer(min(publishTimeout, time.Until(dl.deadline)))
	defer wait.Stop()
	r.mu.Lock()
	up := r.up
	r.mu.Unlock()
	select {
	case <-up:
	case <-wait.C:
		return &publishing{dl: dl, err: fmt.Sprintf("not connected to MQTT broker %s (is it running?)", r.cfg.Broker)}
	}
	return &publishing{dl: dl, tok: r.mqtt.Publish(d.GetTopic(), 1, false, d.GetBody())}
}

// request sends a servicebus delivery to its application.
func (r *Router) request(dl *delivery) {
	d := dl.d
	r.state.requests.Add(1)
	res := &edgesyncv1.RouteResult{Id: d.GetId()}
	ctx, cancel := context.WithDeadline(context.Background(), dl.deadline)
	defer cancel()
	err := r.call(ctx, d, res)
	if err != nil {
		r.state.requestsFailed.Add(1)
		res = &edgesyncv1.RouteResult{Id: d.GetId(), Error: err.Error()}
	}
	r.finish(res)
}

func (r *Router) call(ctx context.Context, d *edgesyncv1.RouteDelivery, res *edgesyncv1.RouteResult) error {
	if d.GetPort() == 0 || d.GetPort() > 65535 {
		return fmt.Errorf("no application port in the delivery")
	}
	url := "http://" + net.JoinHostPort(r.cfg.AppHost, strconv.Itoa(int(d.GetPort()))) + d.GetPath()
	req, err := http.NewRequestWithContext(ctx, d.GetMethod(), url, bytes.NewReader(d.GetBody()))
	if err != nil {
		return fmt.Errorf("request %s %s: %w", d.GetMethod(), d.GetPath(), err)
	}
	for _, h := range d.GetHeaders() {
		req.Header[http.CanonicalHeaderKey(h.GetName())] = h.GetValues()
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("application on port %d: %w", d.GetPort(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes+1))
	if err != nil {
		return fmt.Errorf("read the application's answer: %w", err)
	}
	if len(body) > maxAnswerBytes {
		return fmt.Errorf("the application's answer is larger than %d bytes", maxAnswerBytes)
	}
	res.StatusCode, res.Body = int32(resp.StatusCode), body
	for name, values := range resp.Header {
		res.Headers = append(res.Headers, &edgesyncv1.RouteHeader{Name: name, Values: values})
	}
	return nil
}

// Subscribe sets the topics sent up (edgeclient.RouteHandler).
func (r *Router) Subscribe(topics []string) {
	want := map[string]bool{}
	for _, t := range topics {
		want[t] = true
	}
	r.mu.Lock()
	var add, remove []string
	for t := range want {
		if !r.topics[t] {
			add = append(add, t)
		}
	}
	for t := range r.topics {
		if !want[t] {
			remove = append(remove, t)
		}
	}
	r.topics = want
	r.mu.Unlock()
	if !r.mqtt.IsConnectionOpen() {
		return // onConnect subscribes
	}
	if len(remove) > 0 {
		r.mqtt.Unsubscribe(remove...)
	}
	r.subscribe(add)
}

func (r *Router) onConnect() {
	r.log.Info("connected to the MQTT broker", zap.String("broker", r.cfg.Broker))
	r.mu.Lock()
	select {
	case <-r.up:
	default:
		close(r.up)
	}
	topics := make([]string, 0, len(r.topics))
	for t := range r.topics {
		topics = append(topics, t)
	}
	r.mu.Unlock()
	r.subscribe(topics)
}

func (r *Router) subscribe(topics []string) {
	if len(topics) == 0 {
		return
	}
	filters := make(map[string]byte, len(topics))
	for _, t := range topics {
		filters[t] = 1
	}
	tok := r.mqtt.SubscribeMultiple(filters, r.received)
	go func() {
		if tok.WaitTimeout(10*time.Second) && tok.Error() != nil {
			r.log.Warn("could not subscribe", zap.Strings("topics", topics), zap.Error(tok.Error()))
		}
	}()
}

// received sends one message an application published up.
func (r *Router) received(_ mqtt.Client, m mqtt.Message) {
	b := r.sender.Load()
	if b == nil {
		return
	}
	if r.unanswered.Load() >= int64(r.cfg.MaxUnanswered) {
		r.state.dropped.Add(1)
		r.log.Warn("dropping a message for the cloud: too many unanswered", zap.String("topic", m.Topic()), zap.Int("limit", r.cfg.MaxUnanswered))
		return
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	rep, err := b.SendRoute(&edgesyncv1.RouteMessage{Id: hex.EncodeToString(id[:]), Topic: m.Topic(), Body: m.Payload()})
	if err != nil {
		r.state.dropped.Add(1)
		return
	}
	r.unanswered.Add(1)
	go func() {
		<-rep.Done()
		r.unanswered.Add(-1)
		if _, err := rep.Wait(context.Background()); err != nil && !errors.Is(err, edgeclient.ErrClosed) {
			r.state.dropped.Add(1)
			r.log.Info("message for the cloud not delivered", zap.String("topic", m.Topic()), zap.Error(err))
			return
		}
		r.state.sentUp.Add(1)
	}()
}
