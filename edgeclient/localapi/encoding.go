package localapi

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"

	"github.com/munnerz/goautoneg"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
)

// codecs are client-go's: every built-in kind, in JSON, YAML and
// protobuf, as kube-apiserver serves them.
var codecs = scheme.Codecs

// unversioned is the version of the kinds every group shares (Status, the
// discovery documents): "v1".
var unversioned = schema.GroupVersion{Version: "v1"}

// maxBody bounds a request body (the apiserver's limit is 3 MiB for
// objects; nothing the kubelet writes comes close).
const maxBody = 3 << 20

// negotiate picks the serializer for the response from the Accept header,
// as the apiserver does: the first acceptable media type by preference;
// JSON when nothing is asked for. Media types asking for another shape
// (as=Table, as=PartialObjectMetadata, aggregated discovery) are not
// served here and are skipped, so that clients fall back to the plain
// one they also accept. stream asks for a serializer that can frame a
// watch.
func negotiate(r *http.Request, stream bool) (runtime.SerializerInfo, bool) {
	accept := r.Header.Get("Accept")
	if accept == "" {
		accept = runtime.ContentTypeJSON
	}
	supported := codecs.SupportedMediaTypes()
	for _, a := range goautoneg.ParseAccept(accept) {
		if a.Params["as"] != "" || a.Params["g"] != "" || a.Params["v"] != "" {
			continue
		}
		want := a.Type + "/" + a.SubType
		if want == "*/*" || want == "application/*" {
			want = runtime.ContentTypeJSON
		}
		for _, info := range supported {
			if info.MediaType != want || (stream && info.StreamSerializer == nil) {
				continue
			}
			return info, true
		}
	}
	return runtime.SerializerInfo{}, false
}

// jsonInfo is the JSON serializer, for answers when negotiation failed.
func jsonInfo() runtime.SerializerInfo {
	info, _ := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeJSON)
	return info
}

// writeObject encodes obj for gv with the serializer info. obj may be
// shared with other requests: it is encoded from a shallow copy, since
// the encoder sets its kind while encoding.
func writeObject(w http.ResponseWriter, info runtime.SerializerInfo, gv runtime.GroupVersioner, code int, obj runtime.Object) {
	enc := codecs.EncoderForVersion(info.Serializer, gv)
	body, err := runtime.Encode(enc, shallow(obj))
	if err != nil {
		code, body = http.StatusInternalServerError, []byte(fmt.Sprintf("encode %T: %v\n", obj, err))
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", info.MediaType)
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// writeError answers err as a metav1.Status with its HTTP code; errors
// that are not API errors are internal errors.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		status = apierrors.NewInternalError(err)
	}
	st := status.Status()
	if st.Code == 0 {
		st.Code = http.StatusInternalServerError
	}
	st.Status = metav1.StatusFailure
	if st.Details != nil && st.Details.RetryAfterSeconds > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(st.Details.RetryAfterSeconds))
	}
	info, ok := negotiate(r, false)
	if !ok {
		info = jsonInfo()
	}
	writeObject(w, info, unversioned, int(st.Code), &st)
}

// shallow returns a copy of obj's top-level struct, sharing everything
// below it.
func shallow(obj runtime.Object) runtime.Object {
	v := reflect.ValueOf(obj)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return obj
	}
	cp := reflect.New(v.Elem().Type())
	cp.Elem().Set(v.Elem())
	out, ok := cp.Interface().(runtime.Object)
	if !ok {
		return obj
	}
	return out
}

// readBody reads a request body of at most maxBody bytes.
func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, apierrors.NewBadRequest("read request body: " + err.Error())
	}
	if len(b) > maxBody {
		return nil, apierrors.NewRequestEntityTooLargeError(fmt.Sprintf("limit is %d bytes", maxBody))
	}
	return b, nil
}

// decodeBody decodes a request body (JSON, YAML or protobuf, by its
// Content-Type) into into, which must be the resource's own type.
func decodeBody(r *http.Request, into runtime.Object) error {
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		mediaType = runtime.ContentTypeJSON
	}
	info, ok := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), mediaType)
	if !ok {
		return apierrors.NewGenericServerResponse(http.StatusUnsupportedMediaType, r.Method, schema.GroupResource{}, "",
			fmt.Sprintf("the body of the request was in an unknown format - accepted media types include: %s", strings.Join(mediaTypes(), ", ")), 0, false)
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	obj, gvk, err := info.Serializer.Decode(body, nil, into)
	if err != nil {
		return apierrors.NewBadRequest(fmt.Sprintf("the body of the request does not decode: %v", err))
	}
	if obj != into {
		return apierrors.NewBadRequest(fmt.Sprintf("the body of the request is a %s, not a %T", gvk, into))
	}
	return nil
}

func mediaTypes() []string {
	var out []string
	for _, info := range codecs.SupportedMediaTypes() {
		out = append(out, info.MediaType)
	}
	return out
}
