package edgeclient

import (
	"errors"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// RouteHandler takes the routed application messages of KubeEdge Rules
// (sync.proto, "Routed messages"); package edgeclient/router is one, for
// an MQTT broker and HTTP applications on the node. Its methods are called
// from the client's apply goroutine and must not block.
type RouteHandler interface {
	// Deliver takes one delivery; the handler answers it with
	// Client.AnswerRoute, also when it is a duplicate of one it handled.
	Deliver(d *edgesyncv1.RouteDelivery)
	// Subscribe sets the MQTT topics whose messages go up with
	// Client.SendRoute: the complete list, replacing the last.
	Subscribe(topics []string)
}

// maxRouteAnswers bounds the answers waiting for a stream. The server
// bounds what it leaves unanswered (64 deliveries and 256 requests per
// node), so only a misbehaving handler reaches it.
const maxRouteAnswers = 4096

// AnswerRoute sends the answer to a RouteDelivery on the current stream.
// Without a stream it is dropped: the server sends the delivery again on
// the next one, and the handler answers the duplicate.
func (c *Client) AnswerRoute(res *edgesyncv1.RouteResult) {
	c.mu.Lock()
	wake := c.wake
	if wake != nil && len(c.routeAnswers) < maxRouteAnswers {
		c.routeAnswers = append(c.routeAnswers, res)
	}
	c.mu.Unlock()
	if wake != nil {
		wake()
	}
}

// takeRouteAnswers returns the answers waiting and forgets them.
func (c *Client) takeRouteAnswers() []*edgesyncv1.RouteResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.routeAnswers
	c.routeAnswers = nil
	return out
}

// SendRoute sends a message an application published on a subscribed
// topic, as a report: kept until the server answers (OK once the rules'
// targets took it), sent again after a reconnect; the server drops an id
// it already delivered. Unlike other reports it is not held to the
// server's report rate (the server has a budget of its own for these), so
// the caller bounds how many it leaves unanswered.
func (c *Client) SendRoute(msg *edgesyncv1.RouteMessage) (*Report, error) {
	if msg.GetId() == "" {
		return nil, errors.New("a routed message needs an id")
	}
	return c.submit("route/"+msg.GetId(), &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_RouteMessage{RouteMessage: msg}})
}

// routeMessage handles the routed messages among the control messages.
func (c *Client) routeMessage(msg *edgesyncv1.SyncResponse) bool {
	switch m := msg.GetMessage().(type) {
	case *edgesyncv1.SyncResponse_RouteDelivery:
		if c.cfg.Router != nil {
			c.cfg.Router.Deliver(m.RouteDelivery)
		} else {
			c.AnswerRoute(&edgesyncv1.RouteResult{Id: m.RouteDelivery.GetId(), Error: "this edge agent does not route messages (no router configured)"})
		}
		return true
	case *edgesyncv1.SyncResponse_RouteSubscriptions:
		if c.cfg.Router != nil {
			c.cfg.Router.Subscribe(m.RouteSubscriptions.GetTopics())
		}
		return true
	}
	return false
}
