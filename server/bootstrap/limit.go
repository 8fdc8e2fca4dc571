package bootstrap

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxIdlePeers is how many peer limiters are kept before the full ones
// (peers that have not called for a while) are dropped.
const maxIdlePeers = 4096

// peerLimits is a token bucket per peer address.
type peerLimits struct {
	every rate.Limit
	burst int

	mu    sync.Mutex // guards peers
	peers map[string]*rate.Limiter
}

func newPeerLimits(every rate.Limit, burst int) *peerLimits {
	return &peerLimits{every: every, burst: burst, peers: make(map[string]*rate.Limiter)}
}

// allow takes a token from host's bucket.
func (l *peerLimits) allow(host string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.peers[host]
	if !ok {
		if len(l.peers) >= maxIdlePeers {
			// A full bucket is the same as a new one: forget it.
			for h, other := range l.peers {
				if other.TokensAt(now) >= float64(l.burst) {
					delete(l.peers, h)
				}
			}
		}
		lim = rate.NewLimiter(l.every, l.burst)
		l.peers[host] = lim
	}
	return lim.AllowN(now, 1)
}
