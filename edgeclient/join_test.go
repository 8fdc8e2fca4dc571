package edgeclient

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/pki"
)

// impostor is a server that knows the cluster's CA certificate (it is
// public) but not its key: it offers that CA in its bundle next to its own,
// which signed its serving certificate.
type impostor struct {
	edgesyncv1.UnimplementedBootstrapServiceServer
	bundle []byte
	issued atomic.Int32 // IssueCertificate calls: tokens it got
}

func (i *impostor) GetCACertificate(context.Context, *edgesyncv1.GetCACertificateRequest) (*edgesyncv1.GetCACertificateResponse, error) {
	return &edgesyncv1.GetCACertificateResponse{CaBundlePem: i.bundle}, nil
}

func (i *impostor) IssueCertificate(context.Context, *edgesyncv1.IssueCertificateRequest) (*edgesyncv1.IssueCertificateResponse, error) {
	i.issued.Add(1)
	return &edgesyncv1.IssueCertificateResponse{}, nil
}

func TestJoinSendsNoTokenToAServerOutsideThePinnedCA(t *testing.T) {
	cluster, err := pki.NewCA("cluster-ca")
	if err != nil {
		t.Fatal(err)
	}
	own, err := pki.NewCA("impostor-ca")
	if err != nil {
		t.Fatal(err)
	}
	serving, err := own.IssueServer([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := serving.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	imp := &impostor{bundle: append(append([]byte{}, cluster.CertPEM...), own.CertPEM...)}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	edgesyncv1.RegisterBootstrapServiceServer(srv, imp)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	_, err = Join(t.Context(), JoinConfig{
		Server: lis.Addr().String(), Token: "abcdef.0123456789abcdef", CACertHash: pki.CAHash(cluster.Cert),
		NodeName: "edge-1", Dir: t.TempDir(),
	})
	if err == nil {
		t.Fatal("join trusted a server whose certificate the pinned CA did not sign")
	}
	if n := imp.issued.Load(); n != 0 {
		t.Fatalf("the impostor received the token %d times", n)
	}
}
