// Package endpoints chooses which server replica an edge dials. An edge may
// be given several addresses of one deployment, and a DNS name may resolve
// to several replicas (a headless Service, round-robin records); each
// address is expanded to one endpoint per IP at every choice, so replicas
// that come and go are followed.
//
// The first choice is random, so that a crowd of edges starting together
// spreads over the replicas. After a failed attempt the next choice is
// another endpoint (at random among the rest), so that an edge whose
// replica died moves on at its next attempt; the caller's backoff (with
// jitter) spaces the attempts. After a session that worked the edge first
// tries the same endpoint again, so that a passing network cut does not
// move it (and its ownership) to another replica.
package endpoints

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
)

// Endpoint is one address to dial.
type Endpoint struct {
	// Addr is what to dial: ip:port for a resolved name, else the address
	// as configured.
	Addr string
	// ServerName is the name to verify the server's certificate against:
	// the configured host (a DNS name or an IP).
	ServerName string
}

func (e Endpoint) String() string {
	if host, _, _ := net.SplitHostPort(e.Addr); host == e.ServerName {
		return e.Addr
	}
	return e.Addr + " (" + e.ServerName + ")"
}

// Resolver looks host names up; *net.Resolver is one.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Set is the addresses of one deployment and the endpoint in use. It is
// not safe for concurrent use.
type Set struct {
	addrs    []string
	resolver Resolver
	intn     func(int) int
	current  *Endpoint
}

// New checks that every address is host:port and returns their Set. A nil
// resolver means net.DefaultResolver.
func New(addrs []string, resolver Resolver) (*Set, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no server address")
	}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("server address %q: want host:port", a)
		}
	}
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	return &Set{addrs: slices.Clone(addrs), resolver: resolver, intn: rand.IntN}, nil
}

// Next returns the endpoint to dial next. worked says whether the last
// attempt got a session: then the same endpoint is kept if it still
// resolves; else another one is chosen when there is another.
func (s *Set) Next(ctx context.Context, worked bool) Endpoint {
	all := s.resolve(ctx)
	if s.current != nil && worked && slices.Contains(all, *s.current) {
		return *s.current
	}
	choices := all
	if s.current != nil && len(all) > 1 {
		choices = slices.DeleteFunc(slices.Clone(all), func(e Endpoint) bool { return e == *s.current })
	}
	next := choices[s.intn(len(choices))]
	s.current = &next
	return next
}

// resolve expands every address into its endpoints; an address whose
// name does not resolve is kept as it is (dialing it reports why).
func (s *Set) resolve(ctx context.Context) []Endpoint {
	var all []Endpoint
	for _, a := range s.addrs {
		host, port, _ := net.SplitHostPort(a)
		if net.ParseIP(host) != nil {
			all = append(all, Endpoint{Addr: a, ServerName: host})
			continue
		}
		ips, err := s.resolver.LookupHost(ctx, host)
		if err != nil || len(ips) == 0 {
			all = append(all, Endpoint{Addr: a, ServerName: host})
			continue
		}
		slices.Sort(ips)
		for _, ip := range slices.Compact(ips) {
			all = append(all, Endpoint{Addr: net.JoinHostPort(ip, port), ServerName: host})
		}
	}
	return all
}
