package reportqueue

import (
	"context"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Guard admits a write for node only while this replica may write for it
// (with several replicas: while it owns the node). It returns a function
// to call once the write is done, so that the node is handed to another
// replica only after the writes under way finished, or the error (a gRPC
// status) to answer the report with. It may wait (while this replica holds
// its nodes' writes) until ctx ends.
type Guard func(ctx context.Context, node string) (done func(), err error)

// Guarded returns handle run under guard: a write the guard refuses is not
// made, and its reports are answered with the guard's error. With a nil
// guard it returns handle.
func Guarded(guard Guard, handle Handler) Handler {
	if guard == nil {
		return handle
	}
	return func(ctx context.Context, node string, req *edgesyncv1.SyncRequest) error {
		done, err := guard(ctx, node)
		if err != nil {
			return err
		}
		defer done()
		return handle(ctx, node, req)
	}
}
