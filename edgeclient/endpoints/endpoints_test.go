package endpoints

import (
	"context"
	"errors"
	"testing"
)

type fakeResolver map[string][]string

func (f fakeResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	if ips, ok := f[host]; ok {
		return ips, nil
	}
	return nil, errors.New("no such host")
}

func TestNewRefusesAddressesWithoutPort(t *testing.T) {
	for _, addrs := range [][]string{nil, {"edgesync.example"}, {"a:1", ":443"}, {"a:"}} {
		if _, err := New(addrs, fakeResolver{}); err == nil {
			t.Errorf("New(%q) accepted", addrs)
		}
	}
}

func TestANameResolvingToSeveralReplicas(t *testing.T) {
	s, err := New([]string{"edgesync.example:443", "10.0.0.9:7443", "gone.example:443"}, fakeResolver{
		"edgesync.example": {"10.0.0.2", "10.0.0.1", "10.0.0.2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := s.resolve(t.Context())
	want := []Endpoint{
		{Addr: "10.0.0.1:443", ServerName: "edgesync.example"},
		{Addr: "10.0.0.2:443", ServerName: "edgesync.example"},
		{Addr: "10.0.0.9:7443", ServerName: "10.0.0.9"},
		{Addr: "gone.example:443", ServerName: "gone.example"},
	}
	if len(got) != len(want) {
		t.Fatalf("endpoints = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("endpoint %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestFirstChoicesSpreadOverReplicas(t *testing.T) {
	addrs := []string{"10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443"}
	count := map[string]int{}
	for range 3000 {
		s, err := New(addrs, nil)
		if err != nil {
			t.Fatal(err)
		}
		count[s.Next(t.Context(), false).Addr]++
	}
	for _, a := range addrs {
		// 1000 expected each; 700 is more than ten standard deviations off.
		if count[a] < 700 {
			t.Errorf("%d of 3000 edges chose %s first, want about a third (%v)", count[a], a, count)
		}
	}
}

func TestAfterAFailureAnotherReplicaAfterASessionTheSame(t *testing.T) {
	s, err := New([]string{"10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	prev := s.Next(t.Context(), false)
	for range 100 {
		next := s.Next(t.Context(), false)
		if next == prev {
			t.Fatalf("after a failed attempt at %v the next is the same", prev)
		}
		prev = next
	}
	for range 10 {
		if next := s.Next(t.Context(), true); next != prev {
			t.Fatalf("after a session with %v the next is %v", prev, next)
		}
	}
}

func TestOneAddressIsAlwaysTheOne(t *testing.T) {
	s, err := New([]string{"edgesync.example:443"}, fakeResolver{})
	if err != nil {
		t.Fatal(err)
	}
	for _, worked := range []bool{false, false, true} {
		if got := s.Next(t.Context(), worked); got.Addr != "edgesync.example:443" {
			t.Fatalf("Next = %v", got)
		}
	}
}
