package edgeclient

import (
	"errors"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	discoveryv1pb "github.com/edgesync/edgesync/gen/k8s/api/discovery/v1"
)

// serviceObject is the fake server's APPLY event for svc.
func serviceObject(svc *corev1.Service) *fakeObject {
	pb := &corev1pb.Service{}
	if err := toProto(svc, pb); err != nil {
		panic(err)
	}
	return &fakeObject{uid: string(svc.UID), rv: svc.ResourceVersion, msg: &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_ServiceEvent{
		ServiceEvent: &edgesyncv1.ServiceEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Service: pb},
	}}}
}

// sliceObject is the fake server's APPLY event for s.
func sliceObject(s *discoveryv1.EndpointSlice) *fakeObject {
	pb := &discoveryv1pb.EndpointSlice{}
	if err := toProto(s, pb); err != nil {
		panic(err)
	}
	return &fakeObject{uid: string(s.UID), rv: s.ResourceVersion, msg: &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_EndpointSliceEvent{
		EndpointSliceEvent: &edgesyncv1.EndpointSliceEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, EndpointSlice: pb},
	}}}
}

// webSlice is a slice of Service shop/web with the given endpoints, each
// serving http on 8080 and metrics on 9090.
func webSlice(name string, addrs ...string) *discoveryv1.EndpointSlice {
	http, metrics, tcp := "http", "metrics", corev1.ProtocolTCP
	p8080, p9090 := int32(8080), int32(9090)
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, UID: types.UID("uid-" + name), ResourceVersion: "7/all",
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &http, Port: &p8080, Protocol: &tcp}, {Name: &metrics, Port: &p9090, Protocol: &tcp}},
	}
	for _, a := range addrs {
		node := "edge-1"
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, NodeName: &node})
	}
	return s
}

func TestResolveServicesOffline(t *testing.T) {
	f := newFakeServer(t)
	dir := t.TempDir()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "uid-web", ResourceVersion: "3"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
			{Name: "metrics", Port: 9090, Protocol: corev1.ProtocolTCP},
		}},
	}
	f.set(store.Key{Kind: edgesyncv1.Kind_KIND_SERVICE, Namespace: "shop", Name: "web"}, serviceObject(svc))
	// The same address in two slices (an endpoint moving between them) is
	// one endpoint.
	f.set(store.Key{Kind: edgesyncv1.Kind_KIND_ENDPOINT_SLICE, Namespace: "shop", Name: "web-a"}, sliceObject(webSlice("web-a", "10.1.0.2", "10.1.0.1")))
	f.set(store.Key{Kind: edgesyncv1.Kind_KIND_ENDPOINT_SLICE, Namespace: "shop", Name: "web-b"}, sliceObject(webSlice("web-b", "10.1.0.3", "10.1.0.2")))
	first := startClient(t, f, "edge-1", dir, true)
	waitState(t, first.Client, "first sync", func(s State) bool { return s.Synced })
	first.stop()
	first.Close()
	f.stop()

	// Offline, from the store alone.
	c := startClient(t, f, "edge-1", dir, false)
	svcs, err := c.Services()
	if err != nil || len(svcs) != 1 || svcs[0].Name != "web" {
		t.Fatalf("Services() = %v, %v; want shop/web", svcs, err)
	}
	for _, port := range []string{"http", "80"} {
		r, err := c.Resolve("shop", "web", port)
		if err != nil {
			t.Fatalf("Resolve(shop, web, %q): %v", port, err)
		}
		if !slices.Equal(r.ClusterIPs, []string{"10.96.0.10"}) || r.Port.Port != 80 {
			t.Errorf("Resolve(%q): cluster IPs %v port %d, want 10.96.0.10:80", port, r.ClusterIPs, r.Port.Port)
		}
		want := []Endpoint{{"10.1.0.1", 8080, "edge-1", ""}, {"10.1.0.2", 8080, "edge-1", ""}, {"10.1.0.3", 8080, "edge-1", ""}}
		if !slices.Equal(r.Endpoints, want) {
			t.Errorf("Resolve(%q) endpoints %v, want %v", port, r.Endpoints, want)
		}
	}
	if r, err := c.Resolve("shop", "web", "metrics"); err != nil || len(r.Endpoints) != 3 || r.Endpoints[0].Port != 9090 {
		t.Errorf("Resolve(metrics) = %+v, %v; want 3 endpoints on 9090", r, err)
	}
	if r, err := c.Resolve("shop", "web", ""); err != nil || len(r.Endpoints) != 3 || r.Endpoints[0].Port != 0 {
		t.Errorf("Resolve(any port) = %+v, %v; want the 3 addresses", r, err)
	}
	for _, tc := range [][3]string{{"shop", "db", "http"}, {"other", "web", "http"}, {"shop", "web", "grpc"}, {"shop", "web", "81"}} {
		if _, err := c.Resolve(tc[0], tc[1], tc[2]); !errors.Is(err, ErrNoService) {
			t.Errorf("Resolve(%v) = %v, want ErrNoService", tc, err)
		}
	}
}
