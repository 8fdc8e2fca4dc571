package feed

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// ErrorKind says what kind of refusal a controller's error is: what the
// edge can do about it. Controllers return errors of a kind (Errorf) and
// build no gRPC statuses; ErrorKind.Code is the one mapping from kinds to
// the codes edges see, used by the server for the statuses sessions end
// with and by Result for the answers to reports.
type ErrorKind int

// The kinds, each named for the gRPC code the edge receives.
const (
	// KindUnknown is an error of no kind: the edge sees UNAVAILABLE (a
	// stream) or INTERNAL (a report), and may try again.
	KindUnknown ErrorKind = iota
	// ErrInvalid: the edge sent something malformed (INVALID_ARGUMENT).
	ErrInvalid
	// ErrNotFound: what the edge names does not exist (NOT_FOUND).
	ErrNotFound
	// ErrPermissionDenied: the node may not do this (PERMISSION_DENIED).
	ErrPermissionDenied
	// ErrFailedPrecondition: the cluster is not in a state that allows it
	// (FAILED_PRECONDITION).
	ErrFailedPrecondition
	// ErrAborted: superseded or replaced (ABORTED).
	ErrAborted
	// ErrResourceExhausted: over a limit (RESOURCE_EXHAUSTED).
	ErrResourceExhausted
	// ErrUnavailable: try again, possibly elsewhere (UNAVAILABLE).
	ErrUnavailable
	// ErrUnimplemented: this server does not offer it (UNIMPLEMENTED).
	ErrUnimplemented
	// ErrCanceled and ErrDeadlineExceeded: the work was cancelled or
	// timed out (CANCELLED, DEADLINE_EXCEEDED).
	ErrCanceled
	ErrDeadlineExceeded
	// ErrInternal: the server failed (INTERNAL).
	ErrInternal
)

// Error is a controller's refusal: its kind and a message the edge's
// operator can act on (never a secret).
type Error struct {
	Kind    ErrorKind
	Message string
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an Error of kind with a formatted message (fmt.Sprintf:
// %w does not wrap).
func Errorf(kind ErrorKind, format string, args ...any) error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...)}
}

// NewError returns an Error of kind with message.
func NewError(kind ErrorKind, message string) error {
	return &Error{Kind: kind, Message: message}
}

// KindOf returns the kind of the Error err is or wraps; KindUnknown when
// it has none.
func KindOf(err error) ErrorKind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindUnknown
}

var codeOf = map[ErrorKind]codes.Code{
	ErrInvalid:            codes.InvalidArgument,
	ErrNotFound:           codes.NotFound,
	ErrPermissionDenied:   codes.PermissionDenied,
	ErrFailedPrecondition: codes.FailedPrecondition,
	ErrAborted:            codes.Aborted,
	ErrResourceExhausted:  codes.ResourceExhausted,
	ErrUnavailable:        codes.Unavailable,
	ErrUnimplemented:      codes.Unimplemented,
	ErrCanceled:           codes.Canceled,
	ErrDeadlineExceeded:   codes.DeadlineExceeded,
	ErrInternal:           codes.Internal,
}

// Code is the gRPC code the edge receives for an error of kind k:
// the one mapping from kinds to codes. KindUnknown has none (Unknown).
func (k ErrorKind) Code() codes.Code {
	if c, ok := codeOf[k]; ok {
		return c
	}
	return codes.Unknown
}

// Result is the answer to report id: OK for a nil err; for an error of a
// kind, its code and err's whole text (a wrapping message included); an
// error without a kind that carries a gRPC status keeps its code and
// message; any other is INTERNAL.
func Result(id uint64, err error) *edgesyncv1.StatusResult {
	if err == nil {
		return &edgesyncv1.StatusResult{RequestId: id, Code: int32(codes.OK)}
	}
	if k := KindOf(err); k != KindUnknown {
		return &edgesyncv1.StatusResult{RequestId: id, Code: int32(k.Code()), Message: err.Error()}
	}
	if st, ok := status.FromError(err); ok {
		return &edgesyncv1.StatusResult{RequestId: id, Code: int32(st.Code()), Message: st.Message()}
	}
	return &edgesyncv1.StatusResult{RequestId: id, Code: int32(codes.Internal), Message: err.Error()}
}
