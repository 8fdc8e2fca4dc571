package controllers

import (
	"errors"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/controllers/router"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

var _ feed.RouteResulter = (*Controllers)(nil)

// newRouter builds the router and its informers (Config.Router).
func (c *Controllers) newRouter(cfg Config) error {
	rules := dynamicinformer.NewFilteredDynamicInformer(cfg.Dynamic, router.Rules, metav1.NamespaceAll, cfg.ResyncPeriod, cache.Indexers{}, nil).Informer()
	endpoints := dynamicinformer.NewFilteredDynamicInformer(cfg.Dynamic, router.RuleEndpoints, metav1.NamespaceAll, cfg.ResyncPeriod, cache.Indexers{}, nil).Informer()
	c.informers = append(c.informers, rules, endpoints)
	rc := router.Config{
		Options: *cfg.Router, Dynamic: cfg.Dynamic, Client: cfg.Client, Rules: rules, Endpoints: endpoints,
		Messenger: messenger{c}, Replica: cfg.Ownership.Replica, Registerer: cfg.Registerer, Logger: cfg.Logger.Named("router"),
	}
	if c.owners != nil {
		rc.Owners = c.owners
	}
	var err error
	if c.router, err = router.New(rc); err != nil {
		return fmt.Errorf("controllers: %w", err)
	}
	return nil
}

// Router returns the router (Config.Router), nil when it is off.
func (c *Controllers) Router() *router.Router { return c.router }

// RouteResult hands an edge's answer to a routed message to the router
// (feed.RouteResulter).
func (c *Controllers) RouteResult(node string, res *edgesyncv1.RouteResult) {
	if c.router != nil {
		c.router.RouteResult(node, res)
	}
}

// messenger carries the router's messages through the publisher Run was
// given (the server, a feed.Messenger).
type messenger struct{ c *Controllers }

func (m messenger) SendMessage(node string, msg *edgesyncv1.SyncResponse) error {
	if s, ok := m.c.pub.(feed.Messenger); ok {
		return s.SendMessage(node, msg)
	}
	return errors.New("the server carries no routed messages")
}
