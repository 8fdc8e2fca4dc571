package servertest_test

import (
	"crypto/tls"
	"os"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStartServesWithRealCertificates(t *testing.T) {
	env := servertest.Start(t, feedtest.New())
	certFile, keyFile := env.NodeCert(t, "node-a")
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Fatalf("NodeCert files: %v", err)
	}
	if ca, err := os.ReadFile(env.CAFile); err != nil || string(ca) != string(env.CAPEM()) {
		t.Fatalf("CAFile does not hold the CA: %v", err)
	}
	for name, conn := range map[string]*grpc.ClientConn{"node": env.DialNode(t, "node-a"), "admin": env.DialAdmin(t)} {
		resp, err := grpc_health_v1.NewHealthClient(conn).Check(t.Context(), &grpc_health_v1.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
			t.Fatalf("health check as %s: %v, %v", name, resp, err)
		}
	}
	env.Stop()
	env.Stop() // idempotent
}
