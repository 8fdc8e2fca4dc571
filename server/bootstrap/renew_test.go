package bootstrap_test

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/bootstrap"
)

// TestRunningAgentRenewsItsCertificate: a node joined with a two-minute
// certificate renews it over its live session before it expires, keeps
// working past the old certificate's expiry without reconnecting, and
// reconnects with the new one.
func TestRunningAgentRenewsItsCertificate(t *testing.T) {
	e := start(t, func(c *bootstrap.Config) { c.CertificateLifetime = 2 * time.Minute })
	node := testcluster.UniqueName("edge")
	token, _ := e.token(t, bootstrap.TokenOptions{TTL: time.Hour, Node: node})
	dir := t.TempDir()
	joined, err := edgeclient.Join(t.Context(), edgeclient.JoinConfig{
		Server: e.Addr, Token: token, CACertHash: e.hash(), NodeName: node, Dir: filepath.Join(dir, "pki"),
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := edgeclient.New(edgeclient.Config{
		Server: e.Addr, CAFile: joined.CAFile, CertFile: joined.CertFile, KeyFile: joined.KeyFile,
		NodeName: node, StoreDir: filepath.Join(dir, "store"), RenewCertificates: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	first, err := c.WaitFor(ctx, func(s edgeclient.State) bool { return s.Synced })
	if err != nil {
		t.Fatal(err)
	}
	oldExpiry := first.CertificateNotAfter
	if !oldExpiry.Equal(joined.NotAfter) {
		t.Fatalf("client uses a certificate expiring %s, join wrote one expiring %s", oldExpiry, joined.NotAfter)
	}

	renewed, err := c.WaitFor(ctx, func(s edgeclient.State) bool { return s.CertificateRenewals > 0 })
	if err != nil {
		t.Fatalf("no renewal within the old certificate's lifetime: %v (state %+v)", err, renewed)
	}
	if !time.Now().Before(oldExpiry) || !renewed.CertificateNotAfter.After(oldExpiry) {
		t.Fatalf("renewed at %s to a certificate expiring %s; the old one expired %s", time.Now(), renewed.CertificateNotAfter, oldExpiry)
	}
	pair, err := tls.LoadX509KeyPair(joined.CertFile, joined.KeyFile)
	if err != nil {
		t.Fatalf("renewed files do not load: %v", err)
	}
	if !pair.Leaf.NotAfter.Equal(renewed.CertificateNotAfter) {
		t.Fatalf("the file holds a certificate expiring %s, the client reports %s", pair.Leaf.NotAfter, renewed.CertificateNotAfter)
	}

	// Past the old certificate's expiry, the session carries on.
	select {
	case <-time.After(time.Until(oldExpiry) + time.Second):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	r, err := c.RegisterNode(edgeclient.NodeRegistration{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(ctx); err != nil {
		t.Fatalf("a report after the old certificate expired: %v", err)
	}
	if st := c.State(); st.Connections != 1 || !st.Connected {
		t.Fatalf("after the renewal: %d connections (connected %v), want the first session still open", st.Connections, st.Connected)
	}

	// A new connection authenticates with the renewed certificate.
	admin := edgesyncv1.NewAdminServiceClient(e.DialAdmin(t))
	if _, err := admin.DisconnectNode(ctx, &edgesyncv1.DisconnectNodeRequest{NodeName: node, Reason: "test: reconnect with the renewed certificate"}); err != nil {
		t.Fatal(err)
	}
	if st, err := c.WaitFor(ctx, func(s edgeclient.State) bool { return s.Connections == 2 && s.Synced }); err != nil {
		t.Fatalf("no reconnect with the renewed certificate: %v (last error %q)", err, st.LastError)
	}
}
