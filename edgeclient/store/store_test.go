package store

import (
	"strings"
	"testing"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

func pod(ns, name, uid, rv, data string) Change {
	k := Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: ns, Name: name}
	return Change{Key: k, Record: &Record{Key: k, UID: uid, ResourceVersion: rv, Data: []byte(data)}}
}

func TestStores(t *testing.T) {
	impls := map[string]func(t *testing.T) Store{
		"memory": func(t *testing.T) Store { return NewMemory() },
		"bolt": func(t *testing.T) Store {
			s, err := Open(t.TempDir(), Options{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
	for name, open := range impls {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			defer s.Close()
			cm := Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: "a", Name: "cfg"}
			err := s.Apply([]Change{
				pod("b", "web", "u1", "10", "pod-b-web"),
				pod("a", "web", "u2", "11", "pod-a-web"),
				pod("a", "db", "u3", "12", ""),
				{Key: cm, Record: &Record{UID: "u4", ResourceVersion: "13", Data: []byte("cm")}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Len(); got != 4 {
				t.Fatalf("Len = %d, want 4", got)
			}
			pods, err := s.List(edgesyncv1.Kind_KIND_POD)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, r := range pods {
				names = append(names, r.Key.Namespace+"/"+r.Key.Name+"@"+r.ResourceVersion+"="+string(r.Data))
			}
			if got, want := strings.Join(names, " "), "a/db@12= a/web@11=pod-a-web b/web@10=pod-b-web"; got != want {
				t.Errorf("List(Pod) = %s, want %s", got, want)
			}
			all, err := s.List(edgesyncv1.Kind_KIND_UNSPECIFIED)
			if err != nil || len(all) != 4 || all[3].Key != cm {
				t.Errorf("List(all) = %v, %v; want 4 records, configmap last", all, err)
			}

			// Replace one, delete one, delete one that is not there.
			err = s.Apply([]Change{
				pod("a", "web", "u2", "20", "pod-a-web-v2"),
				{Key: Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "b", Name: "web"}},
				{Key: Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "x", Name: "nope"}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Len(); got != 3 {
				t.Errorf("Len after delete = %d, want 3", got)
			}
			r, err := s.Get(Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "a", Name: "web"})
			if err != nil || r == nil || r.ResourceVersion != "20" || string(r.Data) != "pod-a-web-v2" || r.UID != "u2" {
				t.Errorf("Get a/web = %+v, %v; want version 20", r, err)
			}
			r, err = s.Get(Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "b", Name: "web"})
			if err != nil || r != nil {
				t.Errorf("Get deleted b/web = %+v, %v; want nil", r, err)
			}
			refs, err := s.Refs()
			if err != nil || len(refs) != 3 {
				t.Fatalf("Refs = %v, %v; want 3", refs, err)
			}
			for _, ref := range refs {
				if ref.GetUid() == "" || ref.GetResourceVersion() == "" || ref.GetKind() == edgesyncv1.Kind_KIND_UNSPECIFIED {
					t.Errorf("incomplete ref %v", ref)
				}
			}
		})
	}
}

// A cluster-scoped object (the node's own Node) has an empty namespace.
func TestClusterScopedKey(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) Store{
		"memory": func(t *testing.T) Store { return NewMemory() },
		"bolt": func(t *testing.T) Store {
			s, err := Open(t.TempDir(), Options{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			defer s.Close()
			k := Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: "edge-1"}
			if err := s.Apply([]Change{pod("a", "web", "u1", "1", "p"), {Key: k, Record: &Record{Key: k, UID: "n1", ResourceVersion: "7", Data: []byte("node")}}}); err != nil {
				t.Fatal(err)
			}
			r, err := s.Get(k)
			if err != nil || r == nil || r.Key != k || string(r.Data) != "node" {
				t.Fatalf("Get(%s) = %+v, %v", k, r, err)
			}
			nodes, err := s.List(edgesyncv1.Kind_KIND_NODE)
			if err != nil || len(nodes) != 1 || nodes[0].Key != k {
				t.Fatalf("List(Node) = %v, %v; want the node only", nodes, err)
			}
			if got := k.String(); got != "Node /edge-1" {
				t.Errorf("key prints as %q", got)
			}
		})
	}
}

func TestBoltSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply([]Change{pod("ns", "p", "u", "7", "data")}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{ReadOnly: true, LockTimeout: 50_000_000}); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("opening a store in use: err = %v, want one saying another process has it open", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if ro.Len() != 1 {
		t.Errorf("Len after reopen = %d, want 1", ro.Len())
	}
	r, err := ro.Get(Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "ns", Name: "p"})
	if err != nil || r == nil || r.ResourceVersion != "7" || string(r.Data) != "data" {
		t.Errorf("Get after reopen = %+v, %v", r, err)
	}
}

func TestOpenReadOnlyMissing(t *testing.T) {
	if _, err := Open(t.TempDir(), Options{ReadOnly: true}); err == nil {
		t.Error("read-only open of an empty directory succeeded; want an error naming the missing file")
	}
}
