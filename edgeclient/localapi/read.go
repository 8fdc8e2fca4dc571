package localapi

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/streaming"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/scheme"
	restwatch "k8s.io/client-go/rest/watch"
)

// Watch timing.
const (
	// bookmarkInterval is how often a watch that allows bookmarks gets
	// one (the apiserver sends them about every minute).
	bookmarkInterval = time.Minute
	// minWatchTimeout is the shortest a watch without timeoutSeconds
	// lasts; the longest is twice that, like the apiserver's.
	minWatchTimeout = 30 * time.Minute
)

// read serves get, list and watch.
func (s *Server) read(w http.ResponseWriter, req *Request) {
	r, res := req.HTTP, req.Resource
	if res.NoReads || req.Verb == "get" && req.Subresource != "" {
		writeError(w, r, apierrors.NewMethodNotSupported(res.GroupResource(), req.Verb))
		return
	}
	var opts metav1.ListOptions
	if err := scheme.ParameterCodec.DecodeParameters(r.URL.Query(), res.GroupVersion, &opts); err != nil {
		writeError(w, r, apierrors.NewBadRequest(err.Error()))
		return
	}
	match, err := matcher(res, opts)
	if err != nil {
		writeError(w, r, err)
		return
	}
	// A list or watch that selects one object by name is a read of
	// that object, as the apiserver authorizes it.
	if req.Verb != "get" {
		if name, ok := fieldName(opts.FieldSelector); ok {
			req.Name = name
		}
	}
	if res.Read != nil {
		if err := res.Read(s, req); err != nil {
			writeError(w, r, err)
			return
		}
	}
	switch req.Verb {
	case "get":
		obj := s.cache.get(objectKey{res.ID(), req.Namespace, req.Name})
		if obj == nil {
			writeError(w, r, apierrors.NewNotFound(res.GroupResource(), req.Name))
			return
		}
		info, ok := negotiate(r, false)
		if !ok {
			writeError(w, r, notAcceptable())
			return
		}
		writeObject(w, info, res.GroupVersion, http.StatusOK, obj)
	case "list":
		if err := s.checkVersion(opts); err != nil {
			writeError(w, r, err)
			return
		}
		items, rv := s.cache.list(res.ID(), req.Namespace, match)
		list := res.NewList()
		if err := meta.SetList(list, items); err != nil {
			writeError(w, r, err)
			return
		}
		if la, err := meta.ListAccessor(list); err == nil {
			la.SetResourceVersion(strconv.FormatUint(rv, 10))
		}
		info, ok := negotiate(r, false)
		if !ok {
			writeError(w, r, notAcceptable())
			return
		}
		writeObject(w, info, res.GroupVersion, http.StatusOK, list)
	case "watch":
		s.watch(w, req, opts, match)
	}
}

// checkVersion refuses a list at a resourceVersion the cache cannot serve:
// one it has not reached (the apiserver's "too large resource version",
// which makes a reflector list again from scratch), or an exact older one.
func (s *Server) checkVersion(opts metav1.ListOptions) error {
	if opts.ResourceVersion == "" || opts.ResourceVersion == "0" {
		return nil
	}
	rv, err := strconv.ParseUint(opts.ResourceVersion, 10, 64)
	if err != nil {
		return apierrors.NewBadRequest(fmt.Sprintf("invalid resource version %q", opts.ResourceVersion))
	}
	current := s.cache.version()
	switch {
	case rv > current:
		return tooLarge(rv, current)
	case opts.ResourceVersionMatch == metav1.ResourceVersionMatchExact && rv != current:
		return apierrors.NewResourceExpired(fmt.Sprintf("too old resource version: %d (%d)", rv, current))
	}
	return nil
}

// tooLarge is the apiserver's answer to a version it has not reached.
func tooLarge(rv, current uint64) error {
	err := apierrors.NewTimeoutError(fmt.Sprintf("Too large resource version: %d, current: %d", rv, current), 1)
	err.ErrStatus.Details.Causes = []metav1.StatusCause{{Type: metav1.CauseTypeResourceVersionTooLarge, Message: "Too large resource version"}}
	return err
}

func notAcceptable() error {
	return apierrors.NewGenericServerResponse(http.StatusNotAcceptable, "", schema.GroupResource{}, "",
		fmt.Sprintf("only the following media types are accepted: %v", mediaTypes()), 0, false)
}

// matcher is the filter of a list or watch's label and field selectors.
func matcher(res *Resource, opts metav1.ListOptions) (func(runtime.Object) bool, error) {
	ls, err := labels.Parse(opts.LabelSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("unable to parse requirement: %v", err))
	}
	fs, err := fields.ParseSelector(opts.FieldSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	for _, r := range fs.Requirements() {
		if !res.selectable(r.Field) {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("field label not supported: %s", r.Field))
		}
	}
	if ls.Empty() && fs.Empty() {
		return nil, nil
	}
	return func(obj runtime.Object) bool {
		m, err := meta.Accessor(obj)
		if err != nil {
			return false
		}
		return ls.Matches(labels.Set(m.GetLabels())) && fs.Matches(res.fieldSet(obj))
	}, nil
}

// fieldName returns the name a field selector asks for exactly, if any.
func fieldName(selector string) (string, bool) {
	fs, err := fields.ParseSelector(selector)
	if err != nil {
		return "", false
	}
	return fs.RequiresExactMatch("metadata.name")
}

// watch streams the changes to a resource, as the apiserver does: from
// the resourceVersion asked for (the recent history replays what came
// after it), or with the current objects first (resourceVersion unset or
// "0", or sendInitialEvents, which ends the initial objects with a
// bookmark); bookmarks when allowed; until the client goes, the timeout,
// or the client falls too far behind.
func (s *Server) watch(w http.ResponseWriter, req *Request, opts metav1.ListOptions, match func(runtime.Object) bool) {
	r, res := req.HTTP, req.Resource
	info, ok := negotiate(r, true)
	if !ok {
		writeError(w, r, notAcceptable())
		return
	}
	sendInitial := opts.SendInitialEvents != nil && *opts.SendInitialEvents
	if sendInitial && (opts.ResourceVersionMatch != metav1.ResourceVersionMatchNotOlderThan || !opts.AllowWatchBookmarks) {
		writeError(w, r, apierrors.NewBadRequest("sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true"))
		return
	}
	initial := sendInitial || (opts.SendInitialEvents == nil && (opts.ResourceVersion == "" || opts.ResourceVersion == "0"))
	var from uint64
	if !initial && opts.ResourceVersion != "" && opts.ResourceVersion != "0" {
		rv, err := strconv.ParseUint(opts.ResourceVersion, 10, 64)
		if err != nil {
			writeError(w, r, apierrors.NewBadRequest(fmt.Sprintf("invalid resource version %q", opts.ResourceVersion)))
			return
		}
		from = rv
	} else if !initial {
		from = s.cache.version()
	}
	if sendInitial && opts.ResourceVersion != "" && opts.ResourceVersion != "0" {
		rv, err := strconv.ParseUint(opts.ResourceVersion, 10, 64)
		if err != nil {
			writeError(w, r, apierrors.NewBadRequest(fmt.Sprintf("invalid resource version %q", opts.ResourceVersion)))
			return
		}
		if current := s.cache.version(); rv > current {
			writeError(w, r, tooLarge(rv, current))
			return
		}
	}
	wt, state, at, verr := s.cache.watch(res.ID(), from, initial, req.Namespace, match)
	if verr != nil {
		if verr.tooOld {
			writeError(w, r, apierrors.NewResourceExpired(fmt.Sprintf("too old resource version: %d (%d)", from, verr.current)))
		} else {
			writeError(w, r, tooLarge(from, verr.current))
		}
		return
	}
	defer s.cache.stopWatch(wt)

	timeout := time.Duration(float64(minWatchTimeout) * (1 + rand.Float64()))
	if opts.TimeoutSeconds != nil && *opts.TimeoutSeconds > 0 {
		timeout = time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	end := time.NewTimer(timeout)
	defer end.Stop()
	var bookmarks <-chan time.Time
	if opts.AllowWatchBookmarks {
		t := time.NewTicker(bookmarkInterval)
		defer t.Stop()
		bookmarks = t.C
	}

	flusher, _ := w.(http.Flusher)
	mediaType := info.MediaType
	if mediaType != runtime.ContentTypeJSON {
		mediaType += ";stream=watch"
	}
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	framer := info.StreamSerializer.Framer.NewFrameWriter(w)
	outer := streaming.NewEncoder(framer, codecs.EncoderForVersion(info.StreamSerializer.Serializer, res.GroupVersion))
	enc := restwatch.NewEncoder(outer, codecs.EncoderForVersion(info.Serializer, res.GroupVersion))
	send := func(typ watch.EventType, obj runtime.Object) bool {
		if err := enc.Encode(&watch.Event{Type: typ, Object: shallow(obj)}); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	bookmark := func(rv uint64, initialEnd bool) bool {
		obj := res.New()
		m, err := meta.Accessor(obj)
		if err != nil {
			return false
		}
		m.SetResourceVersion(strconv.FormatUint(rv, 10))
		if initialEnd {
			m.SetAnnotations(map[string]string{metav1.InitialEventsAnnotationKey: "true"})
		}
		return send(watch.Bookmark, obj)
	}

	for _, obj := range state {
		if !send(watch.Added, obj) {
			return
		}
	}
	last := at
	if sendInitial && !bookmark(at, true) {
		return
	}
	if flusher != nil {
		flusher.Flush()
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-end.C:
			return
		case <-bookmarks:
			if rv, ok := s.cache.quiet(wt); ok && !bookmark(max(last, rv), false) {
				return
			}
		case ch, ok := <-wt.ch:
			if !ok {
				return // fell behind: the client resumes from last
			}
			last = ch.rv
			typ, obj, ok := filterChange(ch, req.Namespace, match)
			if ok && !send(typ, obj) {
				return
			}
		}
	}
}

// filterChange turns a change into the event a filtered watch sees: an
// object that stops matching is DELETED for it, one that starts matching
// ADDED, as in the apiserver's watch cache.
func filterChange(ch change, namespace string, match func(runtime.Object) bool) (watch.EventType, runtime.Object, bool) {
	in := func(o runtime.Object) bool {
		if o == nil {
			return false
		}
		if namespace != "" {
			if m, err := meta.Accessor(o); err != nil || m.GetNamespace() != namespace {
				return false
			}
		}
		return match == nil || match(o)
	}
	switch ch.typ {
	case watch.Added:
		return watch.Added, ch.obj, in(ch.obj)
	case watch.Deleted:
		return watch.Deleted, ch.obj, in(ch.old)
	}
	now, before := in(ch.obj), in(ch.old)
	switch {
	case now && before:
		return watch.Modified, ch.obj, true
	case now:
		return watch.Added, ch.obj, true
	case before:
		// The object as it is now, at the change's version.
		return watch.Deleted, ch.obj, true
	}
	return "", nil, false
}
