package netx

import (
	"net/netip"
	"testing"
)

func TestSourceAddr(t *testing.T) {
	tests := []struct {
		i    uint64
		want string
	}{
		{0, "127.0.0.1"},
		{connsPerSource - 1, "127.0.0.1"},
		{connsPerSource, "127.0.0.2"},
		{255 * connsPerSource, "127.0.1.0"},
	}
	for _, tt := range tests {
		if got := SourceAddr(tt.i); got != netip.MustParseAddr(tt.want) {
			t.Errorf("SourceAddr(%d) = %v, want %v", tt.i, got, tt.want)
		}
	}
}
