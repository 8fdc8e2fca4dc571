package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/internal/version"
	"github.com/edgesync/edgesync/server/pki"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, repo.ClientGoLeakOptions()...)
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// execute runs the command tree with args and returns its output and error.
func execute(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(t.Context())
	return out.String(), err
}

func TestPrintDefaultConfigRoundTrips(t *testing.T) {
	out, err := execute(t, "--print-default-config")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(writeFile(t, "default.yaml", out))
	if err != nil {
		t.Fatalf("printed default config does not load: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(cfg, defaultConfig()) {
		t.Fatalf("printed config loads as %+v, want the defaults", cfg)
	}
	if err := cfg.validate(); err != nil {
		t.Fatalf("default config is invalid: %v", err)
	}
	for _, field := range []string{"listenAddress:", "ackWindow:", "heartbeatInterval: 15s", "qps:", "burst:", "kubeconfig:"} {
		if !strings.Contains(out, field) {
			t.Errorf("default config lacks %q:\n%s", field, out)
		}
	}
}

func TestPartialFileKeepsDefaults(t *testing.T) {
	cfg, err := loadConfig(writeFile(t, "c.yaml", "nodeLimit: 5\nkeepalive:\n  time: 1m\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := defaultConfig()
	want.NodeLimit = 5
	want.Keepalive.Time.Duration = time.Minute
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("loaded %+v, want defaults with nodeLimit 5 and keepalive.time 1m", cfg)
	}
}

func TestBadConfigNamesTheField(t *testing.T) {
	tests := []struct {
		name, file string
		args       []string
		want       []string
	}{
		{name: "bad values", file: "ackWindow: 0\nlog:\n  level: loud\nkeepalive:\n  timeout: -1s\n", want: []string{"ackWindow", "log.level", "keepalive.timeout"}},
		{name: "heartbeat timeout not longer than the interval", file: "heartbeatInterval: 20s\nheartbeatTimeout: 20s\n", want: []string{"heartbeatTimeout", "longer than heartbeatInterval"}},
		{name: "unknown field", file: "ackWindo: 3\n", want: []string{"ackWindo"}},
		{name: "bad flag value", file: "", args: []string{"--listen", "nowhere"}, want: []string{"listenAddress"}},
		{name: "serve subcommand takes the same flags", args: []string{"serve", "--ack-window", "0"}, want: []string{"ackWindow"}},
		{name: "missing file", args: []string{"--config", "/nonexistent/edgesync.yaml"}, want: []string{"/nonexistent/edgesync.yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, "c.yaml", tt.file))
			}
			_, err := execute(t, args...)
			if err == nil {
				t.Fatal("bad configuration accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

func TestLeaseSettings(t *testing.T) {
	t.Run("defaults keep the default node limit's Leases alive within the Lease budget", func(t *testing.T) {
		d := defaultConfig()
		hb, renew, lease := d.HeartbeatInterval.Duration, d.Controllers.LeaseRenewInterval.Duration, d.Controllers.LeaseDuration.Duration
		// A renewal waits for the first heartbeat nine tenths of the
		// renew interval after the previous one.
		cadence := hb * ((renew*9/10 + hb - 1) / hb)
		if lapse := cadence + hb; lapse >= lease {
			t.Errorf("renewals every %s (heartbeats every %s, renew interval %s): one lost heartbeat leaves a Lease unrenewed for %s, not less than its duration %s",
				cadence, hb, renew, lapse, lease)
		}
		if writes := float64(d.NodeLimit) / cadence.Seconds(); writes > float64(d.Kubernetes.LeaseQPS) || d.Kubernetes.LeaseBurst < int(d.Kubernetes.LeaseQPS) {
			t.Errorf("%d nodes renewing every %s write %.0f Leases per second; leaseQPS %g, leaseBurst %d", d.NodeLimit, cadence, writes, d.Kubernetes.LeaseQPS, d.Kubernetes.LeaseBurst)
		}
		out, err := execute(t, "--print-default-config")
		if err != nil {
			t.Fatal(err)
		}
		for _, field := range []string{"leaseQPS: 1000", "leaseBurst: 2000", "leaseRenewInterval: 15s", "leaseDuration: 40s", "heartbeatInterval: 15s"} {
			if !strings.Contains(out, field) {
				t.Errorf("default config lacks %q:\n%s", field, out)
			}
		}
	})

	t.Run("a file overrides them", func(t *testing.T) {
		cfg, err := loadConfig(writeFile(t, "c.yaml", "kubernetes:\n  leaseQPS: 1200\n  leaseBurst: 2400\ncontrollers:\n  leaseRenewInterval: 5s\n"))
		if err != nil {
			t.Fatal(err)
		}
		want := defaultConfig()
		want.Kubernetes.LeaseQPS, want.Kubernetes.LeaseBurst = 1200, 2400
		want.Controllers.LeaseRenewInterval.Duration = 5 * time.Second
		if !reflect.DeepEqual(cfg, want) {
			t.Fatalf("loaded %+v, want defaults with leaseQPS 1200, leaseBurst 2400, leaseRenewInterval 5s", cfg)
		}
		if err := cfg.validate(); err != nil {
			t.Fatal(err)
		}
	})

	tests := []struct {
		name, file string
		want       []string
	}{
		{name: "renew interval of half the duration", file: "controllers:\n  leaseDuration: 20s\n  leaseRenewInterval: 10s\n",
			want: []string{"controllers.leaseRenewInterval: must be less than half of controllers.leaseDuration (20s)", "got 10s", "a quarter: 5s"}},
		{name: "zero renew interval", file: "controllers:\n  leaseRenewInterval: 0s\n",
			want: []string{"controllers.leaseRenewInterval: must be a positive duration"}},
		{name: "zero lease budget", file: "kubernetes:\n  leaseQPS: 0\n  leaseBurst: 0\n",
			want: []string{"kubernetes.leaseQPS: must be positive", "nodes / controllers.leaseRenewInterval", "kubernetes.leaseBurst: must be at least 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := execute(t, "--config", writeFile(t, "c.yaml", tt.file))
			if err == nil {
				t.Fatal("bad configuration accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestFlagsOverrideFile(t *testing.T) {
	f := &serveFlags{}
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	f.register(fs)
	path := writeFile(t, "c.yaml", "nodeLimit: 5\nackWindow: 9\nlog:\n  level: warn\n")
	if err := fs.Parse([]string{"--config", path, "--node-limit", "7", "--kubeconfig", "/k"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.resolveConfig(fs)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeLimit != 7 || cfg.AckWindow != 9 || cfg.Log.Level != "warn" || cfg.Kubernetes.Kubeconfig != "/k" {
		t.Fatalf("got nodeLimit %d, ackWindow %d, log.level %q, kubeconfig %q; want 7 (flag), 9 and warn (file), /k (flag)",
			cfg.NodeLimit, cfg.AckWindow, cfg.Log.Level, cfg.Kubernetes.Kubeconfig)
	}
}

// TestServeAgainstCluster runs the whole server with the real controllers
// against the devcluster: a node connects and gets Welcome, and when the
// context ends (SIGTERM) the edge is told to dial again and serve returns
// nil.
func TestServeAgainstCluster(t *testing.T) {
	testcluster.RESTConfig(t) // skips without a devcluster
	kubeconfig := os.Getenv(testcluster.KubeconfigEnv)

	dir := t.TempDir()
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	srvPair, err := ca.IssueServer([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.ServerID = "cmd-test"
	cfg.TLS = TLSConfig{CAFile: filepath.Join(dir, "ca.crt"), CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key")}
	if err := ca.KeyPair().WriteFiles(cfg.TLS.CAFile, filepath.Join(dir, "ca.key"), false); err != nil {
		t.Fatal(err)
	}
	if err := srvPair.WriteFiles(cfg.TLS.CertFile, cfg.TLS.KeyFile, false); err != nil {
		t.Fatal(err)
	}
	cfg.Kubernetes.Kubeconfig = kubeconfig
	cfg.Controllers.DisableDevices = true
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- serve(ctx, cfg, zaptest.NewLogger(t), lis, httpLis) }()

	node, err := ca.IssueNode("cmd-test-node")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := node.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tlsClient(cert, ca))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Until the informer caches have synced, sessions end UNAVAILABLE and
	// the edge dials again: poll for Welcome with a deadline.
	var stream grpc.BidiStreamingClient[edgesyncv1.SyncRequest, edgesyncv1.SyncResponse]
	deadline := time.Now().Add(time.Minute)
	for {
		stream, err = edgesyncv1.NewSyncServiceClient(conn).Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A stream the server already ended (UNAVAILABLE before the caches
		// synced) fails Send with io.EOF; Recv then returns its status.
		if err := stream.Send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "cmd-test-node"}}}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		msg, err := stream.Recv()
		if err == nil && msg.GetWelcome().GetServerId() == "cmd-test" {
			break
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("first message %v, %v; want Welcome from cmd-test", msg, err)
		}
		time.Sleep(50 * time.Millisecond) // polling external state: the caches syncing
	}
	// Welcome means the caches have synced: the replica is ready.
	for _, check := range []struct{ path, want string }{
		{"/readyz", "ok"}, {"/metrics", "go_goroutines"}, {"/metrics", `edgesync_lease_renewals_total{result="error"} 0`},
	} {
		path, want := check.path, check.want
		resp, err := http.Get("http://" + httpLis.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, want 200 with %q", path, resp.StatusCode, want)
		}
	}
	cancel()
	for {
		if _, err = stream.Recv(); err != nil {
			break
		}
	}
	if status.Code(err) != codes.Unavailable && status.Code(err) != codes.Canceled {
		t.Errorf("stream ended with %v, want Unavailable", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("serve returned %v after shutdown, want nil", err)
	}
}

func tlsClient(cert tls.Certificate, ca *pki.CA) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
}

func TestVersionFlag(t *testing.T) {
	out, err := execute(t, "--version")
	if err != nil {
		t.Fatal(err)
	}
	want := version.Get()
	if !strings.HasPrefix(out, "edgesync-server "+want.Version+" (commit "+want.Commit) {
		t.Errorf("--version printed %q, want the name, version %q and commit %q", out, want.Version, want.Commit)
	}
}
