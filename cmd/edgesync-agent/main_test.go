package main

import (
	"bytes"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/version"
)

func TestListCommand(t *testing.T) {
	dir := t.TempDir()
	s, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "u1", ResourceVersion: "17"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "nginx:1.27"}}},
	}
	data, err := pod.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	key := store.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "shop", Name: "web"}
	if err := s.Apply([]store.Change{{Key: key, Record: &store.Record{Key: key, UID: "u1", ResourceVersion: "17", Data: data}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	cmd := newRootCommand()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"list", "--store", dir})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "KIND") || !strings.Contains(lines[1], "shop") ||
		!strings.Contains(lines[1], "web") || !strings.Contains(lines[1], "17") || !strings.Contains(lines[1], "images=nginx:1.27") {
		t.Errorf("list printed:\n%s", out.String())
	}
}

func TestRunNeedsItsFlags(t *testing.T) {
	var out bytes.Buffer
	cmd := newRootCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"--server", "localhost:1"})
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "node") || !strings.Contains(err.Error(), "cert") {
		t.Errorf("running without --node and --cert: %v, want an error naming the missing flags", err)
	}
}

func TestVersionFlag(t *testing.T) {
	var out bytes.Buffer
	cmd := newRootCommand()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--version"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	want := version.Get()
	if !strings.HasPrefix(out.String(), "edgesync-agent "+want.Version+" (commit "+want.Commit) {
		t.Errorf("--version printed %q, want the name, version %q and commit %q", out.String(), want.Version, want.Commit)
	}
}
