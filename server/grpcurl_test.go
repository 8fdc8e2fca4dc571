package server_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/servertest"
)

// TestGrpcurl checks that an operator with only certificates and grpcurl
// can list, describe, health-check and administer the server.
func TestGrpcurl(t *testing.T) {
	grpcurl := repo.Binary(t, "grpcurl")
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	connect(t, env, "node-a").recvInitial()
	adminCert, adminKey := env.AdminCert(t, "operator")
	nodeCert, nodeKey := env.NodeCert(t, "node-a")

	run := func(cert, key string, args ...string) (string, error) {
		t.Helper()
		full := append([]string{"-cacert", env.CAFile, "-cert", cert, "-key", key}, args...)
		out, err := exec.CommandContext(t.Context(), grpcurl, full...).CombinedOutput()
		return string(out), err
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{name: "list", args: []string{env.Addr, "list"}, want: []string{
			"edgesync.v1.SyncService", "edgesync.v1.AdminService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
		}},
		{name: "describe", args: []string{env.Addr, "describe", "edgesync.v1.SyncService"}, want: []string{"rpc Sync ( stream .edgesync.v1.SyncRequest ) returns ( stream .edgesync.v1.SyncResponse )"}},
		{name: "health", args: []string{env.Addr, "grpc.health.v1.Health/Check"}, want: []string{`"status": "SERVING"`}},
		{name: "list sessions", args: []string{env.Addr, "edgesync.v1.AdminService/ListSessions"}, want: []string{`"nodeName": "node-a"`, `"initialSyncComplete": true`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := run(adminCert, adminKey, tt.args...)
			if err != nil {
				t.Fatalf("grpcurl %s: %v\n%s", strings.Join(tt.args, " "), err, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("grpcurl %s output lacks %q:\n%s", strings.Join(tt.args, " "), w, out)
				}
			}
		})
	}
	t.Run("node certificate refused by AdminService", func(t *testing.T) {
		out, err := run(nodeCert, nodeKey, env.Addr, "edgesync.v1.AdminService/ListSessions")
		if err == nil || !strings.Contains(out, "PermissionDenied") {
			t.Fatalf("grpcurl with a node certificate: %v\n%s\nwant PermissionDenied", err, out)
		}
	})
}
