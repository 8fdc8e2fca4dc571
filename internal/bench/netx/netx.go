// Package netx holds the operating-system plumbing a benchmark with many
// connections needs: a higher open-file limit, and a dialer that spreads
// connections over several loopback source addresses so that one client
// address does not run out of ephemeral ports.
package netx

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// RaiseFileLimit raises the soft RLIMIT_NOFILE to at least want and
// returns the new soft limit. Up to the hard limit any process may; above it
// the hard limit is raised too, which needs CAP_SYS_RESOURCE (root) and
// stops at the kernel's fs.nr_open. Without the privilege the soft limit
// stops at the hard one and the caller compares the result with what it
// needs. Child processes inherit the limits, so a benchmark that raises
// them raises its server's too.
func RaiseFileLimit(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("get open-file limit: %w", err)
	}
	if want > lim.Max {
		if nrOpen, err := kernelFileLimit(); err == nil {
			want = min(want, nrOpen)
		}
		raised := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			return want, nil
		}
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("raise open-file limit to %d: %w", lim.Max, err)
		}
	}
	return lim.Cur, nil
}

// kernelFileLimit is fs.nr_open, the most open files a process may have.
func kernelFileLimit() (uint64, error) {
	b, err := os.ReadFile("/proc/sys/fs/nr_open")
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// connsPerSource is how many connections one source address carries before
// the dialer moves to the next. Linux's default ephemeral range holds ~28,000
// ports; staying well below it leaves room for TIME_WAIT after a storm.
const connsPerSource = 10000

// Dialer dials TCP from 127.0.0.1, 127.0.0.2, ... in turn, connsPerSource
// connections per address, when the target is on loopback.
type Dialer struct {
	n atomic.Uint64
}

// DialContext has the signature of grpc.WithContextDialer.
func (d *Dialer) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	var nd net.Dialer
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().IsLoopback() && ap.Addr().Is4() {
		i := d.n.Add(1) - 1
		nd.LocalAddr = &net.TCPAddr{IP: SourceAddr(i).AsSlice()}
	}
	return nd.DialContext(ctx, "tcp", addr)
}

// SourceAddr returns the loopback source address of the i-th connection.
func SourceAddr(i uint64) netip.Addr {
	k := i / connsPerSource // 0 -> 127.0.0.1
	k++
	return netip.AddrFrom4([4]byte{127, byte(k >> 16), byte(k >> 8), byte(k)})
}
