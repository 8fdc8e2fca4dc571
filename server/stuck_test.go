package server_test

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"

	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server"
)

// sessionGoroutines counts goroutines running session code of the server.
func sessionGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("edgesync/server.(*session)")) {
			count++
		}
	}
	return count
}

// waitSessionGoroutines polls until at most n session goroutines run.
func waitSessionGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for sessionGoroutines() > n {
		if time.Now().After(deadline) {
			t.Fatalf("%d session goroutines still running, want at most %d", sessionGoroutines(), n)
		}
		time.Sleep(10 * time.Millisecond) // observing the runtime, not waiting for an event we own
	}
}

// An edge that stops reading fills its HTTP/2 window and blocks the
// server's Send. Replacing or disconnecting it must still end its session
// and free its goroutines.
func TestEdgeThatStopsReading(t *testing.T) {
	for _, how := range []string{"replaced", "disconnected"} {
		t.Run(how, func(t *testing.T) {
			ctrls := feedtest.New()
			env := servertest.Start(t, ctrls, func(o *server.Options) { o.AckWindow = 10000 })
			stuck := connect(t, env, "node-a")
			stuck.recvInitial()
			big := strings.Repeat("x", 256<<10)
			for i := range 200 { // 50 MiB: far beyond any flow-control window
				ctrls.Put("node-a", feedtest.ConfigMap("ns", fmt.Sprint("cm-", i), "1", map[string]string{"big": big}))
			}
			switch how {
			case "replaced":
				fresh := connect(t, env, "node-a")
				fresh.recvObjects(1)
				fresh.cancel()
			case "disconnected":
				admin := edgesyncv1.NewAdminServiceClient(env.DialAdmin(t))
				if _, err := admin.DisconnectNode(t.Context(), &edgesyncv1.DisconnectNodeRequest{NodeName: "node-a"}); err != nil {
					t.Fatal(err)
				}
			}
			if err := ctrls.WaitSessionEnded(t.Context(), "node-a", 1); err != nil {
				t.Fatal(err)
			}
			waitSessionGoroutines(t, 0)
			want := codes.Aborted
			if how == "disconnected" {
				want = codes.Unavailable
			}
			// What was in flight arrives first, then the status.
			stuck.expectEnd(want)
		})
	}
}
