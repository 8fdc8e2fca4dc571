package server_test

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server/feed"
)

// A node the controllers refuse at Hello gets their status and no session:
// no Welcome, no SessionEnded, and an older session of the same node (from
// before the refusal) is not replaced.
func TestAdmitRefusesAtHello(t *testing.T) {
	tests := []struct {
		name     string
		refusal  error
		want     codes.Code
		contains string
	}{
		{
			name:     "the code of its kind",
			refusal:  feed.Errorf(feed.ErrPermissionDenied, `Node %q is not an edge node`, "node-a"),
			want:     codes.PermissionDenied,
			contains: `Node "node-a" is not an edge node`,
		},
		{
			name:     "status kept",
			refusal:  status.Error(codes.PermissionDenied, `Node "node-a" is not an edge node`),
			want:     codes.PermissionDenied,
			contains: "not an edge node",
		},
		{
			name:     "plain error is unavailable",
			refusal:  errors.New("caches still loading"),
			want:     codes.Unavailable,
			contains: "caches still loading",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctrls := feedtest.New()
			env := servertest.Start(t, ctrls)
			old := connect(t, env, "node-a")
			old.recvInitial()

			ctrls.SetAdmit(func(node string) error {
				if node == "node-a" {
					return tt.refusal
				}
				return nil
			})
			e := openStream(t, env.DialNode(t, "node-a"), "node-a")
			e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "node-a"}}})
			if st := e.waitEnd(); st.Code() != tt.want || !strings.Contains(st.Message(), tt.contains) {
				t.Fatalf("refused Hello ended with %v %q, want %v mentioning %q", st.Code(), st.Message(), tt.want, tt.contains)
			}
			connect(t, env, "node-b").recvInitial() // others are admitted

			ctrls.Put("node-a", cm("still-served", "1"))
			if got := old.recvObjects(1); names(got)[0] != "still-served@1" {
				t.Fatalf("the older session got %v after a refused stream of its node", names(got))
			}
			if ended := ctrls.Ended(); len(ended) != 0 {
				t.Fatalf("SessionEnded(%v) for a refused stream", ended)
			}
		})
	}
}

// EndSession ends the node's session with the status the controllers give,
// and only that session; the server then tells the controllers it ended.
func TestEndSessionEndsTheNodesSessionWithItsStatus(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	a := connect(t, env, "node-a")
	a.recvInitial()
	b := connect(t, env, "node-b")
	b.recvInitial()

	env.Server.EndSession("node-c", status.Error(codes.FailedPrecondition, "no session: nothing happens"))
	env.Server.EndSession("node-a", feed.NewError(feed.ErrFailedPrecondition, `Node "node-a" was deleted; register it again`))
	st := a.expectEnd(codes.FailedPrecondition)
	if !strings.Contains(st.Message(), "was deleted") {
		t.Errorf("ended with %q, want the controllers' message", st.Message())
	}
	if err := ctrls.WaitSessionEnded(t.Context(), "node-a", 1); err != nil {
		t.Fatal(err)
	}

	ctrls.Put("node-b", cm("b", "1"))
	if got := b.recvObjects(1); names(got)[0] != "b@1" {
		t.Fatalf("node-b got %v", names(got))
	}

	// An error without a status ends the session UNAVAILABLE.
	env.Server.EndSession("node-b", errors.New("plain"))
	b.expectEnd(codes.Unavailable)
}
