package edgeclient

import (
	"testing"
	"time"
)

func TestRenewalBetween70And90PercentOfLifetime(t *testing.T) {
	notBefore := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, life := range []time.Duration{2 * time.Minute, 365 * 24 * time.Hour} {
		notAfter := notBefore.Add(life)
		lo, hi := notBefore.Add(life*7/10), notBefore.Add(life*9/10)
		var first time.Time
		spread := false
		for i := range 1000 {
			at := renewalTime(notBefore, notAfter)
			if at.Before(lo) || at.After(hi) {
				t.Fatalf("lifetime %s: renewal at %s, want between %s and %s", life, at.Sub(notBefore), lo.Sub(notBefore), hi.Sub(notBefore))
			}
			if i == 0 {
				first = at
			} else if !at.Equal(first) {
				spread = true
			}
		}
		if !spread {
			t.Fatalf("lifetime %s: every node would renew at the same moment", life)
		}
	}
}

func TestParseCAHash(t *testing.T) {
	good := "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	if _, err := parseCAHash(good); err != nil {
		t.Fatalf("%s: %v", good, err)
	}
	for _, bad := range []string{"", "0123", "sha1:0123", "sha256:xyz", good[:len(good)-2], "md5:" + good[7:]} {
		if _, err := parseCAHash(bad); err == nil {
			t.Errorf("CA hash %q accepted", bad)
		}
	}
}
