package server_test

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/server"
	"github.com/edgesync/edgesync/server/pki"
)

func TestNewRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts server.Options
		want string
	}{
		{name: "no TLS", opts: server.Options{}, want: "TLS.CAFile"},
		{name: "negative window", opts: server.Options{AckWindow: -1, TLS: server.TLSFiles{CAFile: "a", CertFile: "b", KeyFile: "c"}}, want: "AckWindow"},
		{name: "missing files", opts: server.Options{TLS: server.TLSFiles{CAFile: "/nonexistent/ca.crt", CertFile: "/nonexistent/tls.crt", KeyFile: "/nonexistent/tls.key"}}, want: "/nonexistent/tls.crt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := server.New(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

// TestServeFromCertificateFiles serves with PEM files, as edgesync-server
// does, and answers a node's health check.
func TestServeFromCertificateFiles(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("files-test")
	if err != nil {
		t.Fatal(err)
	}
	files := server.TLSFiles{CAFile: filepath.Join(dir, "ca.crt"), CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	if err := ca.KeyPair().WriteFiles(files.CAFile, filepath.Join(dir, "ca.key"), false); err != nil {
		t.Fatal(err)
	}
	serving, err := ca.IssueServer([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := serving.WriteFiles(files.CertFile, files.KeyFile, false); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{ServerID: "files", TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis, feedtest.New()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	node, err := ca.IssueNode("node-a")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := node.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tlsClientConfig(cert, ca))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: "edgesync.v1.SyncService"})
	if err != nil || resp.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
		t.Fatalf("health of SyncService: %v, %v; want SERVING", resp, err)
	}
}

func tlsClientConfig(cert tls.Certificate, ca *pki.CA) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
}
