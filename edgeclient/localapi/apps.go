package localapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Applications at the edge: a pod's own programs (client-go with
// rest.InClusterConfig, operators, CNI agents) read any resource through
// the local API, authenticated by the ServiceAccount token the pod mounts:
// a bearer token equal to one the cloud pushed to this node
// (TokenEvent). Anything else is 401: a token the node was not given
// opens nothing, and no client certificate is needed for it (the
// kubelet's certificate still authenticates the kubelet).
//
// A read (get, list, watch) of GROUP/VERSION/RESOURCE in a namespace (or
// all) subscribes the node on behalf of that ServiceAccount
// (edgeclient.Client.Subscribe) and waits for the cloud's decision: served
// from the store once ACTIVE (403 when the ServiceAccount may not list and
// watch it, 404 for a resource the API server does not serve); offline,
// a subscription that was ACTIVE is served from the store, anything else
// is 503. A watch ends when its subscription ends (the next list is then
// 403). Objects carry the local API's resourceVersions, like every object
// it serves. Only JSON is served for these resources.
//
// Writes (POST, PUT, PATCH, DELETE) go to the API server through the cloud
// with the application's own token while the node is online
// (edgeclient.Client.WriteResource): the API server authorizes them, and
// its answer is returned as it is. Offline they get 503 "node is
// offline".

// appWait bounds how long a read waits for the cloud to decide a new
// subscription.
const appWait = 20 * time.Second

// maxAppBody bounds the body of a write.
const maxAppBody = 3 << 20

// appClient is what applications need of the edgeclient.
type appClient interface {
	Subscribe(*edgesyncv1.Subscription) (string, error)
	WaitSubscription(ctx context.Context, id string) error
	SubscriptionState(id string) (*edgesyncv1.SubscriptionEvent, error)
	WriteResource(ctx context.Context, w *edgesyncv1.ResourceWrite) (*edgesyncv1.ResourceWriteResult, error)
}

func (r clientReporter) Subscribe(s *edgesyncv1.Subscription) (string, error) {
	return r.c.Subscribe(s)
}
func (r clientReporter) WaitSubscription(ctx context.Context, id string) error {
	return r.c.WaitSubscription(ctx, id)
}
func (r clientReporter) SubscriptionState(id string) (*edgesyncv1.SubscriptionEvent, error) {
	return r.c.SubscriptionState(id)
}
func (r clientReporter) WriteResource(ctx context.Context, w *edgesyncv1.ResourceWrite) (*edgesyncv1.ResourceWriteResult, error) {
	return r.c.WriteResource(ctx, w)
}

// app is an authenticated edge application.
type app struct {
	namespace, serviceAccount string
	token                     string
}

func (a *app) user() string { return "system:serviceaccount:" + a.namespace + ":" + a.serviceAccount }

// appWatches keeps the subscription states the local API has served
// (through OnEvent, after the objects they cover) and ends the watches of
// subscriptions that ended.
type appWatches struct {
	mu      sync.Mutex // guards the fields below
	byID    map[string]map[*context.CancelFunc]struct{}
	states  map[string]*edgesyncv1.SubscriptionEvent
	changed chan struct{} // closed and replaced when states change
}

// state returns the state of subscription id and a channel closed at the
// next change.
func (w *appWatches) state(id string) (*edgesyncv1.SubscriptionEvent, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.changed == nil {
		w.changed = make(chan struct{})
	}
	return w.states[id], w.changed
}

func (w *appWatches) setState(id string, ev *edgesyncv1.SubscriptionEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.states == nil {
		w.states = map[string]*edgesyncv1.SubscriptionEvent{}
	}
	if ev == nil {
		delete(w.states, id)
	} else {
		w.states[id] = ev
	}
	if w.changed != nil {
		close(w.changed)
	}
	w.changed = make(chan struct{})
}

func (w *appWatches) add(id string, cancel *context.CancelFunc) (remove func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.byID == nil {
		w.byID = map[string]map[*context.CancelFunc]struct{}{}
	}
	if w.byID[id] == nil {
		w.byID[id] = map[*context.CancelFunc]struct{}{}
	}
	w.byID[id][cancel] = struct{}{}
	return func() {
		w.mu.Lock()
		delete(w.byID[id], cancel)
		w.mu.Unlock()
	}
}

func (w *appWatches) end(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for cancel := range w.byID[id] {
		(*cancel)()
	}
	delete(w.byID, id)
}

// appCaller authenticates a request by the ServiceAccount token it
// carries, compared with the tokens the node holds.
func (s *Server) appCaller(r *http.Request) (*app, bool) {
	h := r.Header.Get("Authorization")
	if !strings.HasPrefix(h, "Bearer ") {
		return nil, false
	}
	token := strings.TrimSpace(strings.TrimPrefix(h, "Bearer "))
	if token == "" {
		return nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tokens {
		if subtle.ConstantTimeCompare([]byte(t.GetToken()), []byte(token)) == 1 {
			return &app{namespace: t.GetMetadata().GetNamespace(), serviceAccount: t.GetServiceAccountName(), token: token}, true
		}
	}
	return nil, false
}

// holdResource serves an object of a subscribed resource.
func (s *Server) holdResource(ev *edgesyncv1.ResourceEvent) {
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(ev.GetObject()); err != nil {
		s.log.Debug("cannot decode a subscribed object", zap.Error(err))
		return
	}
	s.cache.put(objectKey{appResourceID(ev.GetGroup(), ev.GetResource()), u.GetNamespace(), u.GetName()}, u, nil)
}

// forgetResource stops serving an object of a subscribed resource.
func (s *Server) forgetResource(key edgeclient.Key) {
	i := strings.LastIndexByte(key.Name, '/')
	j := strings.LastIndexByte(key.Name[:max(i, 0)], '/')
	if i <= 0 || j <= 0 {
		return
	}
	gv, err := schema.ParseGroupVersion(key.Name[:j])
	if err != nil {
		return
	}
	s.cache.remove(objectKey{appResourceID(gv.Group, key.Name[j+1:i]), key.Namespace, key.Name[i+1:]})
}

// subscriptionChanged ends the watches of a subscription that ended.
func (s *Server) subscriptionChanged(ev *edgesyncv1.SubscriptionEvent) {
	s.apps.setState(ev.GetMetadata().GetName(), ev)
	if ev.GetState() == edgesyncv1.SubscriptionState_SUBSCRIPTION_STATE_ENDED {
		s.apps.end(ev.GetMetadata().GetName())
	}
}

// appResourceID keys a subscribed resource in the cache (apart from the
// resources the kubelet reads).
func appResourceID(group, resource string) string { return "app:" + group + "/" + resource }

// appRequest is a request of an application, parsed.
type appRequest struct {
	gvr             schema.GroupVersionResource
	namespace, name string
	subresource     string
}

func parseAppPath(path string) (*appRequest, bool) {
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	req := &appRequest{}
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		req.gvr.Version, parts = parts[1], parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		req.gvr.Group, req.gvr.Version, parts = parts[1], parts[2], parts[3:]
	default:
		return nil, false
	}
	if len(parts) >= 3 && parts[0] == "namespaces" {
		req.namespace, parts = parts[1], parts[2:]
	}
	if len(parts) == 0 || len(parts) > 3 || parts[0] == "" {
		return nil, false
	}
	req.gvr.Resource = parts[0]
	if len(parts) > 1 {
		req.name = parts[1]
	}
	if len(parts) > 2 {
		req.subresource = parts[2]
	}
	return req, true
}

// serveApp serves one request of an edge application.
func (s *Server) serveApp(w http.ResponseWriter, r *http.Request, a *app) {
	client, ok := s.client.(appClient)
	path := strings.TrimSuffix(r.URL.Path, "/")
	req, parsed := parseAppPath(path)
	if !ok || !parsed {
		writeError(w, r, apierrors.NewGenericServerResponse(http.StatusNotFound, r.Method, schema.GroupResource{}, "", "", 0, false))
		return
	}
	gr := req.gvr.GroupResource()
	if r.Method != http.MethodGet {
		s.appWrite(w, r, a, client, gr)
		return
	}
	if req.subresource != "" {
		writeError(w, r, apierrors.NewMethodNotSupported(gr, "get "+req.subresource))
		return
	}
	state, err := s.appSubscription(r.Context(), a, client, req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var opts metav1.ListOptions
	if err := scheme.ParameterCodec.DecodeParameters(r.URL.Query(), schema.GroupVersion{Version: "v1"}, &opts); err != nil {
		writeError(w, r, apierrors.NewBadRequest(err.Error()))
		return
	}
	match, err := appMatcher(opts)
	if err != nil {
		writeError(w, r, err)
		return
	}
	id := appResourceID(req.gvr.Group, req.gvr.Resource)
	switch {
	case req.name != "":
		obj := s.cache.get(objectKey{id, req.namespace, req.name})
		if obj == nil {
			writeError(w, r, apierrors.NewNotFound(gr, req.name))
			return
		}
		writeJSON(w, http.StatusOK, obj)
	case r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1":
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		defer s.apps.add(state.GetMetadata().GetName(), &cancel)()
		s.appWatch(ctx, w, r, id, req.namespace, opts, match)
	default:
		items, rv := s.cache.list(id, req.namespace, match)
		list := &unstructured.UnstructuredList{Object: map[string]any{
			"apiVersion": req.gvr.GroupVersion().String(), "kind": state.GetKind() + "List",
		}}
		list.SetResourceVersion(strconv.FormatUint(rv, 10))
		for _, o := range items {
			if u, ok := o.(*unstructured.Unstructured); ok {
				list.Items = append(list.Items, *u)
			}
		}
		writeJSON(w, http.StatusOK, list)
	}
}

// appSubscription makes sure a's subscription covering req is ACTIVE:
// held as such (also offline), or subscribed and decided now.
func (s *Server) appSubscription(ctx context.Context, a *app, client appClient, req *appRequest) (*edgesyncv1.SubscriptionEvent, error) {
	gr := req.gvr.GroupResource()
	sub := &edgesyncv1.Subscription{
		ServiceAccountNamespace: a.namespace, ServiceAccountName: a.serviceAccount,
		Group: req.gvr.Group, Version: req.gvr.Version, Resource: req.gvr.Resource, Namespace: req.namespace,
	}
	candidates := []*edgesyncv1.Subscription{sub}
	if req.namespace != "" {
		all := proto.CloneOf(sub)
		all.Namespace = ""
		candidates = append(candidates, all)
	}
	for _, c := range candidates {
		st, _ := s.apps.state(edgeclient.SubscriptionID(c))
		if st.GetState() == edgesyncv1.SubscriptionState_SUBSCRIPTION_STATE_ACTIVE {
			return st, nil
		}
	}
	if !s.client.State().Connected {
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf(
			"node %q is offline and has not served %s to ServiceAccount %s/%s before; try again once it is connected", s.node, gr, a.namespace, a.serviceAccount))
	}
	id, err := client.Subscribe(sub)
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	sub.Id = id // as the held state echoes it
	// The state is waited for as the local API received it (OnEvent),
	// after the objects the subscription covers.
	timer := time.NewTimer(appWait)
	defer timer.Stop()
	var ev *edgesyncv1.SubscriptionEvent
	for {
		var changed <-chan struct{}
		ev, changed = s.apps.state(id)
		if ev != nil && proto.Equal(ev.GetSubscription(), sub) && ev.GetState() != edgesyncv1.SubscriptionState_SUBSCRIPTION_STATE_UNSPECIFIED {
			break
		}
		select {
		case <-changed:
			continue
		case <-timer.C:
			return nil, apierrors.NewTimeoutError(fmt.Sprintf("the cloud did not decide within %s whether %s/%s may list and watch %s", appWait, a.namespace, a.serviceAccount, gr), 1)
		case <-ctx.Done():
			return nil, apierrors.NewTimeoutError("the request ended", 1)
		}
	}
	if ev.GetState() == edgesyncv1.SubscriptionState_SUBSCRIPTION_STATE_ACTIVE {
		return ev, nil
	}
	st := status.New(codes.Code(ev.GetCode()), ev.GetMessage())
	switch st.Code() {
	case codes.PermissionDenied:
		return nil, apierrors.NewForbidden(gr, "", errors.New(st.Message()))
	case codes.InvalidArgument:
		return nil, apierrors.NewNotFound(gr, "")
	case codes.ResourceExhausted:
		return nil, apierrors.NewTooManyRequestsError(st.Message())
	}
	return nil, apierrors.NewServiceUnavailable(st.Message())
}

// appMatcher filters by the request's label and field selectors (any
// field path of the object).
func appMatcher(opts metav1.ListOptions) (func(runtime.Object) bool, error) {
	ls, err := labels.Parse(opts.LabelSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	fs, err := fields.ParseSelector(opts.FieldSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	return func(o runtime.Object) bool {
		u, ok := o.(*unstructured.Unstructured)
		if !ok || !ls.Matches(labels.Set(u.GetLabels())) {
			return false
		}
		if fs.Empty() {
			return true
		}
		set := fields.Set{}
		for _, req := range fs.Requirements() {
			v, found, _ := unstructured.NestedFieldNoCopy(u.Object, strings.Split(req.Field, ".")...)
			if found {
				set[req.Field] = fmt.Sprint(v)
			}
		}
		return fs.Matches(set)
	}, nil
}

// appWatch streams the changes of one resource as JSON watch events until
// the client leaves, the timeout passes or the subscription ends.
func (s *Server) appWatch(ctx context.Context, w http.ResponseWriter, r *http.Request, id, namespace string, opts metav1.ListOptions, match func(runtime.Object) bool) {
	initial := opts.ResourceVersion == "" || opts.ResourceVersion == "0" || (opts.SendInitialEvents != nil && *opts.SendInitialEvents)
	var from uint64
	if !initial {
		rv, err := strconv.ParseUint(opts.ResourceVersion, 10, 64)
		if err != nil {
			writeError(w, r, apierrors.NewBadRequest(fmt.Sprintf("invalid resource version %q", opts.ResourceVersion)))
			return
		}
		from = rv
	}
	wt, state, at, verr := s.cache.watch(id, from, initial, namespace, match)
	if verr != nil {
		if verr.tooOld {
			writeError(w, r, apierrors.NewResourceExpired(fmt.Sprintf("too old resource version: %d (%d)", from, verr.current)))
		} else {
			writeError(w, r, tooLarge(from, verr.current))
		}
		return
	}
	defer s.cache.stopWatch(wt)
	timeout := minWatchTimeout
	if opts.TimeoutSeconds != nil && *opts.TimeoutSeconds > 0 {
		timeout = time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	end := time.NewTimer(timeout)
	defer end.Stop()
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	send := func(typ watch.EventType, obj runtime.Object) bool {
		if err := enc.Encode(metav1.WatchEvent{Type: string(typ), Object: runtime.RawExtension{Object: obj}}); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	for _, obj := range state {
		if !send(watch.Added, obj) {
			return
		}
	}
	if opts.SendInitialEvents != nil && *opts.SendInitialEvents {
		bm := &unstructured.Unstructured{Object: map[string]any{}}
		bm.SetResourceVersion(strconv.FormatUint(at, 10))
		bm.SetAnnotations(map[string]string{metav1.InitialEventsAnnotationKey: "true"})
		if !send(watch.Bookmark, bm) {
			return
		}
	}
	if flusher != nil {
		flusher.Flush()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-end.C:
			return
		case ch, ok := <-wt.ch:
			if !ok {
				return
			}
			if typ, obj, ok := filterChange(ch, namespace, match); ok && !send(typ, obj) {
				return
			}
		}
	}
}

// appWrite sends a write to the API server through the cloud, as the
// application; 503 while the node is offline.
func (s *Server) appWrite(w http.ResponseWriter, r *http.Request, a *app, client appClient, gr schema.GroupResource) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAppBody+1))
	if err != nil {
		writeError(w, r, apierrors.NewBadRequest(err.Error()))
		return
	}
	if len(body) > maxAppBody {
		writeError(w, r, apierrors.NewRequestEntityTooLargeError(fmt.Sprintf("at most %d bytes", maxAppBody)))
		return
	}
	res, err := client.WriteResource(r.Context(), &edgesyncv1.ResourceWrite{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, ContentType: r.Header.Get("Content-Type"), Body: body, Token: a.token,
	})
	switch {
	case errors.Is(err, edgeclient.ErrOffline):
		writeError(w, r, apierrors.NewServiceUnavailable(fmt.Sprintf(
			"node %q is offline: writes of %s reach the API server only while the node is connected to the cloud", s.node, gr)))
		return
	case err != nil:
		if st, ok := status.FromError(err); ok && st.Code() == codes.PermissionDenied {
			writeError(w, r, apierrors.NewForbidden(gr, "", errors.New(st.Message())))
			return
		}
		writeError(w, r, apierrors.NewServiceUnavailable(err.Error()))
		return
	}
	if ct := res.GetContentType(); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(int(res.GetHttpStatus()))
	_, _ = w.Write(res.GetBody())
}

func writeJSON(w http.ResponseWriter, code int, obj runtime.Object) {
	body, err := json.Marshal(obj)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
