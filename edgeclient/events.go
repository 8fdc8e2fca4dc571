package edgeclient

import (
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// DefaultEventBuffer is how many events ReportEvent keeps waiting by
// default.
const DefaultEventBuffer = 256

// Events are sent at most at the rate a server accepts by default from one
// node (5 per second, bursts of 50): faster, the server drops them.
const (
	eventRate  = 5
	eventBurst = 50
)

// EventReport is something that happened on the node, recorded in the
// cloud as a Kubernetes Event (see edgesync.v1.EventReport).
type EventReport struct {
	// Regarding is the object: a pod or device bound to the node
	// (KIND_POD, KIND_DEVICE), or the node itself (KIND_NODE, by name).
	Regarding Key
	// UID is the pod's uid, as the node received it; may be empty.
	UID string
	// FieldPath names a part of the object, such as
	// "spec.containers{web}"; may be empty.
	FieldPath string
	// Type is corev1.EventTypeNormal or corev1.EventTypeWarning; Normal
	// when empty.
	Type string
	// Reason is a short UpperCamelCase word ("Started"); Action what was
	// done ("Started"), Reason when empty; Note says it for people.
	Reason, Action, Note string
	// Time is when it happened; now when zero.
	Time time.Time
}

// eventQueue holds the events not sent yet, oldest first, and the ids of
// those sent and not answered.
type eventQueue struct {
	mu      sync.Mutex // guards the fields below
	limit   int
	waiting []*edgesyncv1.SyncRequest
	sent    map[uint64]bool
}

// ReportEvent queues ev for the cloud and returns at once: it never
// blocks. Events wait while the node is offline, up to Config.EventBuffer;
// beyond that the oldest are dropped (State.EventsDropped). They are sent
// at the rate the server accepts; an event sent on a stream that breaks
// before the answer is not sent again, and one the server refuses is
// counted in State.EventsRefused.
func (c *Client) ReportEvent(ev EventReport) error {
	switch ev.Regarding.Kind {
	case edgesyncv1.Kind_KIND_POD, edgesyncv1.Kind_KIND_DEVICE, edgesyncv1.Kind_KIND_NODE:
	default:
		return fmt.Errorf("an event may regard a pod, a device or the node, not %s", ev.Regarding.Kind)
	}
	if ev.Regarding.Name == "" || ev.Reason == "" {
		return fmt.Errorf("an event needs the object's name and a reason")
	}
	if ev.Type == "" {
		ev.Type = corev1.EventTypeNormal
	}
	if ev.Action == "" {
		ev.Action = ev.Reason
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	req := &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_EventReport{EventReport: &edgesyncv1.EventReport{
		Regarding: &edgesyncv1.ObjectRef{Kind: ev.Regarding.Kind, Namespace: ev.Regarding.Namespace, Name: ev.Regarding.Name, Uid: ev.UID},
		FieldPath: ev.FieldPath, Type: ev.Type, Reason: ev.Reason, Action: ev.Action, Note: ev.Note,
		EventTime: timestamppb.New(ev.Time),
	}}}
	q := &c.events
	q.mu.Lock()
	q.waiting = append(q.waiting, req)
	dropped := 0
	if over := len(q.waiting) - q.limit; over > 0 {
		q.waiting = append(q.waiting[:0:0], q.waiting[over:]...)
		dropped = over
	}
	q.mu.Unlock()
	if dropped > 0 {
		c.updateState(func(st *State) { st.EventsDropped += uint64(dropped) })
	}
	c.mu.Lock()
	wake := c.wake
	c.mu.Unlock()
	if wake != nil {
		wake()
	}
	return nil
}

// sendEvents sends waiting events while lim allows, and returns how long
// to wait before the next when it does not.
func (s *session) sendEvents(lim *rate.Limiter) (time.Duration, error) {
	c, q := s.c, &s.c.events
	for {
		q.mu.Lock()
		if len(q.waiting) == 0 {
			q.mu.Unlock()
			return 0, nil
		}
		res := lim.Reserve()
		if d := res.Delay(); d > 0 {
			res.Cancel()
			q.mu.Unlock()
			return d, nil
		}
		req := q.waiting[0]
		q.waiting[0] = nil
		q.waiting = q.waiting[1:]
		q.mu.Unlock()

		c.mu.Lock()
		c.lastID++
		req.RequestId = c.lastID
		c.mu.Unlock()
		q.mu.Lock()
		if q.sent == nil {
			q.sent = make(map[uint64]bool)
		}
		q.sent[req.RequestId] = true
		q.mu.Unlock()
		if err := s.write(req); err != nil {
			q.mu.Lock()
			delete(q.sent, req.RequestId)
			q.waiting = append([]*edgesyncv1.SyncRequest{req}, q.waiting...)
			q.mu.Unlock()
			return 0, err
		}
	}
}

// eventAnswered takes the answer to an event, if res answers one.
func (c *Client) eventAnswered(res *edgesyncv1.StatusResult) bool {
	q := &c.events
	q.mu.Lock()
	ok := q.sent[res.GetRequestId()]
	delete(q.sent, res.GetRequestId())
	q.mu.Unlock()
	if !ok {
		return false
	}
	if res.GetCode() != int32(codes.OK) {
		c.log.Debug("server refused event", zap.Int32("code", res.GetCode()), zap.String("message", res.GetMessage()))
		c.updateState(func(st *State) { st.EventsRefused++ })
	}
	return true
}

// forgetSentEvents drops the ids of events sent on a stream that ended:
// their answers will not come.
func (c *Client) forgetSentEvents() {
	c.events.mu.Lock()
	c.events.sent = nil
	c.events.mu.Unlock()
}
