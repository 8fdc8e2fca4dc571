package server_test

import (
	"sync"
	"testing"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server/feed"
)

// adoptingControllers record what each Hello reported held, and whether
// Desired came after it.
type adoptingControllers struct {
	*feedtest.Controllers
	mu      sync.Mutex
	adopted map[string][]*edgesyncv1.ObjectRef
	late    []string // nodes whose Desired came before their Adopt
}

func (c *adoptingControllers) Adopt(node string, held []*edgesyncv1.ObjectRef) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.adopted[node] = held
}

func (c *adoptingControllers) Desired(node string) ([]*feed.Object, error) {
	c.mu.Lock()
	if _, ok := c.adopted[node]; !ok {
		c.late = append(c.late, node)
	}
	c.mu.Unlock()
	return c.Controllers.Desired(node)
}

// Controllers that can take over what an edge holds (feed.Adopter) are
// told what its Hello reports before they are asked what it should hold,
// so that a replica that restarted adopts rather than makes anew.
func TestControllersAdoptWhatTheHelloReports(t *testing.T) {
	ctrls := &adoptingControllers{Controllers: feedtest.New(), adopted: map[string][]*edgesyncv1.ObjectRef{}}
	env := servertest.Start(t, ctrls)
	obj := cm("settings", "7")
	ctrls.Put("node-a", obj)
	held := &edgesyncv1.ObjectRef{Kind: obj.Key.Kind, Namespace: obj.Key.Namespace, Name: obj.Key.Name, Uid: obj.UID, ResourceVersion: obj.ResourceVersion}
	e := connect(t, env, "node-a", held)
	if objs, _, _ := e.recvInitial(); len(objs) != 0 {
		t.Fatalf("sent %v, all of which the edge held", names(objs))
	}

	ctrls.mu.Lock()
	defer ctrls.mu.Unlock()
	if len(ctrls.late) != 0 {
		t.Errorf("Desired came before Adopt for %v", ctrls.late)
	}
	got := ctrls.adopted["node-a"]
	if len(got) != 1 || got[0].GetName() != held.GetName() || got[0].GetResourceVersion() != held.GetResourceVersion() || got[0].GetUid() != obj.UID {
		t.Errorf("Adopt got %v, want the Hello's %v", got, held)
	}
}
