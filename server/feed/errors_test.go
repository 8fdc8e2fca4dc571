package feed_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgesync/edgesync/server/feed"
)

// TestResult: the answer an edge gets for each kind of error a controller
// returns, its message unchanged.
func TestResult(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"ok", nil, codes.OK, ""},
		{"invalid", feed.Errorf(feed.ErrInvalid, "pod_status.status: %v", "bad"), codes.InvalidArgument, "pod_status.status: bad"},
		{"not found", feed.NewError(feed.ErrNotFound, "gone"), codes.NotFound, "gone"},
		{"permission denied", feed.NewError(feed.ErrPermissionDenied, "not yours"), codes.PermissionDenied, "not yours"},
		{"failed precondition", feed.NewError(feed.ErrFailedPrecondition, "x"), codes.FailedPrecondition, "x"},
		{"aborted", feed.NewError(feed.ErrAborted, "x"), codes.Aborted, "x"},
		{"resource exhausted", feed.NewError(feed.ErrResourceExhausted, "x"), codes.ResourceExhausted, "x"},
		{"unavailable", feed.NewError(feed.ErrUnavailable, "x"), codes.Unavailable, "x"},
		{"unimplemented", feed.NewError(feed.ErrUnimplemented, "x"), codes.Unimplemented, "x"},
		{"canceled", feed.NewError(feed.ErrCanceled, "x"), codes.Canceled, "x"},
		{"deadline", feed.NewError(feed.ErrDeadlineExceeded, "x"), codes.DeadlineExceeded, "x"},
		{"internal", feed.NewError(feed.ErrInternal, "x"), codes.Internal, "x"},
		{"wrapped", fmt.Errorf("claim: %w", feed.NewError(feed.ErrUnavailable, "busy")), codes.Unavailable, "claim: busy"},
		{"a gRPC status", status.Error(codes.Aborted, "replaced"), codes.Aborted, "replaced"},
		{"no kind", context.Canceled, codes.Internal, "context canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := feed.Result(7, tc.err)
			if r.GetRequestId() != 7 || codes.Code(r.GetCode()) != tc.code || r.GetMessage() != tc.msg {
				t.Errorf("Result = %v, want request 7, %v %q", r, tc.code, tc.msg)
			}
		})
	}
	if k := feed.KindOf(errors.New("plain")); k != feed.KindUnknown || k.Code() != codes.Unknown {
		t.Errorf("a plain error has kind %v (code %v), want none", k, k.Code())
	}
}
