package encodecache

import (
	"testing"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

func TestOneEncodingPerVersion(t *testing.T) {
	c := New()
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "ns", Name: "p"}
	encodes := 0
	get := func(uid, version string) *feed.Object {
		t.Helper()
		obj, err := c.Get(key, uid, version, func() (*feed.Object, error) {
			encodes++
			return feed.Encode(key, uid, version, false, &edgesyncv1.SyncResponse{})
		})
		if err != nil {
			t.Fatal(err)
		}
		return obj
	}
	first := get("u1", "1")
	if again := get("u1", "1"); again != first || encodes != 1 {
		t.Fatalf("second Get of the same version encoded again (%d encodes) or returned another object", encodes)
	}
	if get("u1", "2"); encodes != 2 {
		t.Fatalf("a new version was not encoded")
	}
	if obj := get("u2", "2"); encodes != 3 || obj.UID != "u2" {
		t.Fatalf("a recreated object (new uid, same version) reused the old encoding")
	}
	c.Forget(key)
	if c.Len() != 0 {
		t.Fatalf("Forget left %d encodings", c.Len())
	}
}
