package main

import (
	"fmt"
	"net"

	"github.com/miekg/dns"
)

// hostResolvers appends the name servers of the resolv.conf file at path
// to forward, leaving out own (the agent's DNS address: forwarding to
// itself would loop).
func hostResolvers(path, own string, forward []string) ([]string, error) {
	conf, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("--dns-forward-host: read %s: %w", path, err)
	}
	for _, s := range conf.Servers {
		if addr := net.JoinHostPort(s, conf.Port); addr != own {
			forward = append(forward, addr)
		}
	}
	return forward, nil
}
