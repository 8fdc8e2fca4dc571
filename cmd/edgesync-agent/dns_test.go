package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestHostResolvers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte("nameserver 127.0.0.1\nnameserver 192.0.2.53\nsearch example.test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := hostResolvers(path, "127.0.0.1:53", []string{"198.51.100.1:53"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"198.51.100.1:53", "192.0.2.53:53"}; !slices.Equal(got, want) {
		t.Errorf("forwarding to %v, want %v (the agent's own address left out)", got, want)
	}
	if _, err := hostResolvers(filepath.Join(t.TempDir(), "missing"), "", nil); err == nil {
		t.Error("a missing resolv.conf was not an error")
	}
}
