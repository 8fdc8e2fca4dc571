package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/bench/cluster"
	"github.com/edgesync/edgesync/internal/bench/edgesim"
	"github.com/edgesync/edgesync/internal/bench/measure"
	"github.com/edgesync/edgesync/server/feed"
)

// subscriptionsResult is scenario 9: edge applications on every node read
// one custom resource through their edge (controllers/dynamicsync): the
// nodes subscribe to it in their Hello as the pods' ServiceAccount, and a
// 1 KiB custom object is updated.
type subscriptionsResult struct {
	Done        bool `json:"done"`
	Nodes       int  `json:"nodes"`
	Updates     int  `json:"updates"`
	ObjectBytes int  `json:"object_bytes"`
	// Latency is from just before each write to the apiserver to each
	// node's receipt of the new version.
	Latency measure.Summary `json:"latency"`
	// CPUPerUpdateMs is the server process's CPU per update, from the
	// write until every node holds it, less its background CPU (every
	// node's heartbeats; backgroundCPU), as the ConfigMap's figure,
	// Kube.FanoutCPUPerUpdateMs, is measured.
	CPUPerUpdateMs float64 `json:"server_cpu_ms_per_update"`
	// Informers is edgesync_dynamic_informers at the end (one per
	// resource however many nodes subscribe); EncodesPerUpdate the
	// encodings of the resource per update (edgesync_dynamic_encodes_total).
	Informers        float64 `json:"dynamic_informers"`
	EncodesPerUpdate float64 `json:"encodes_per_update"`
}

var gadgets = schema.GroupVersionResource{Group: "bench.edgesync.io", Version: "v1", Resource: "gadgets"}

const gadgetName = "shared"

// gadgetSubscription is what a node's applications subscribe to: the
// Gadgets of the benchmark's namespace, as the namespace's default
// ServiceAccount, which each node's pod runs as.
func gadgetSubscription() *edgesyncv1.Subscription {
	s := &edgesyncv1.Subscription{ServiceAccountNamespace: kubeNamespace, ServiceAccountName: "default",
		Group: gadgets.Group, Version: gadgets.Version, Resource: gadgets.Resource, Namespace: kubeNamespace}
	s.Id = edgeclient.SubscriptionID(s)
	return s
}

// prepareSubscriptions installs what scenario 9 needs before the edges
// connect (their Hello subscribes): the Gadget CRD, RBAC letting the
// default ServiceAccount list and watch Gadgets, and the Gadget itself.
func prepareSubscriptions(ctx context.Context, cl *cluster.Cluster) (dynamic.Interface, error) {
	cfg, err := cl.RESTConfig()
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": gadgets.Resource + "." + gadgets.Group},
		"spec": map[string]any{
			"group": gadgets.Group, "scope": "Namespaced",
			"names": map[string]any{"plural": gadgets.Resource, "singular": "gadget", "kind": "Gadget", "listKind": "GadgetList"},
			"versions": []any{map[string]any{
				"name": gadgets.Version, "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
			}},
		},
	}}
	if _, err := dyn.Resource(crds).Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create the Gadget CRD: %w", err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := dyn.Resource(gadgets).Namespace(kubeNamespace).List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	}); err != nil {
		return nil, fmt.Errorf("the Gadget CRD is not served: %w", err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "read-gadgets"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{gadgets.Group}, Resources: []string{gadgets.Resource}, Verbs: []string{"get", "list", "watch"}},
	}}
	if _, err := kube.RbacV1().Roles(kubeNamespace).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create Role: %w", err)
	}
	if _, err := kube.RbacV1().RoleBindings(kubeNamespace).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "read-gadgets"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: kubeNamespace}},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create RoleBinding: %w", err)
	}
	g := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": gadgets.GroupVersion().String(), "kind": "Gadget",
		"metadata": map[string]any{"name": gadgetName},
		"spec":     map[string]any{"seq": int64(0), "payload": strings.Repeat("x", 700)},
	}}
	if _, err := dyn.Resource(gadgets).Namespace(kubeNamespace).Create(ctx, g, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create Gadget: %w", err)
	}
	return dyn, nil
}

// subscriptionsScenario runs scenario 9 on the first n nodes of fleet,
// which subscribed in their Hello: it waits until each holds the Gadget,
// then updates it FanoutUpdates times, each time until every node holds
// the new version.
func (b *bench) subscriptionsScenario(ctx context.Context, dyn dynamic.Interface, srv *child, fleet *edgesim.Fleet, nodes []string) error {
	s := &b.result.Kube.Subscriptions
	s.Nodes, s.Updates = len(nodes), b.sc.FanoutUpdates
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_RESOURCE, Namespace: kubeNamespace,
		Name: feed.ResourceName(gadgets.Group, gadgets.Version, gadgets.Resource, gadgetName)}
	if err := waitFor(ctx, 5*time.Minute, "every subscribed node holds the Gadget", func() bool {
		return len(fleet.Arrivals(key)) >= len(nodes)
	}); err != nil {
		return fmt.Errorf("%w (%d of %d)", err, len(fleet.Arrivals(key)), len(nodes))
	}
	b.prog.say("subscriptions: %d nodes hold the Gadget", len(nodes))
	encodes := func() float64 {
		m, err := srv.metrics(ctx)
		if err != nil {
			return 0
		}
		return m.Sum("edgesync_dynamic_encodes_total", map[string]string{"resource": gadgets.GroupResource().String()})
	}
	enc0 := encodes()
	profDone := make(chan error, 1)
	go func() {
		profDone <- srv.profile(ctx, "profile", 10, filepath.Join(b.out, "subscriptions-apiserver-cpu.pprof"))
	}()
	background, err := backgroundCPU(ctx, srv)
	if err != nil {
		return err
	}
	cpu0, _ := srv.proc()
	start := time.Now()
	var samples []time.Duration
	for i := range s.Updates {
		patch := fmt.Appendf(nil, `{"spec":{"seq":%d}}`, i+1)
		sentAt := time.Now()
		got, err := dyn.Resource(gadgets).Namespace(kubeNamespace).Patch(ctx, gadgetName, types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil {
			return fmt.Errorf("update Gadget: %w", err)
		}
		if i == 0 {
			// As the edges receive it: without managedFields.
			sent := got.DeepCopy()
			sent.SetManagedFields(nil)
			if body, err := sent.MarshalJSON(); err == nil {
				s.ObjectBytes = len(body)
			}
		}
		rv := got.GetResourceVersion()
		if err := waitFor(ctx, time.Minute, fmt.Sprintf("Gadget update %d on every subscribed node", i+1), func() bool {
			return fleet.HeldVersion(key, rv) >= len(nodes)
		}); err != nil {
			return err
		}
		for _, a := range fleet.Arrivals(key) {
			if a.Version == rv {
				samples = append(samples, a.At.Sub(sentAt))
			}
		}
	}
	cpu1, _ := srv.proc()
	elapsed := time.Since(start).Seconds()
	if err := <-profDone; err != nil {
		fmt.Fprintf(os.Stderr, "subscriptions CPU profile: %v\n", err)
	}
	s.CPUPerUpdateMs = 1000 * (cpu1.CPUSeconds - cpu0.CPUSeconds - background*elapsed) / float64(s.Updates)
	s.EncodesPerUpdate = (encodes() - enc0) / float64(s.Updates)
	if m, err := srv.metrics(ctx); err == nil {
		s.Informers = m.Sum("edgesync_dynamic_informers", nil)
	}
	s.Latency = measure.Summarize(slices.Clone(samples))
	s.Done = true
	b.prog.say("subscriptions: p50 %.1f ms p99 %.1f ms max %.1f ms; server CPU %.1f ms per update (ConfigMap %.1f ms); %s encodings per update, %s informers",
		s.Latency.P50Ms, s.Latency.P99Ms, s.Latency.MaxMs, s.CPUPerUpdateMs, b.result.Kube.FanoutCPUPerUpdateMs,
		strconv.FormatFloat(s.EncodesPerUpdate, 'f', 1, 64), strconv.FormatFloat(s.Informers, 'f', 0, 64))
	return nil
}

// backgroundWindow is how long the server's CPU is measured without
// updates, to take its background (heartbeats) out of a per-update cost.
const backgroundWindow = 5 * time.Second

// backgroundCPU returns the server's CPU seconds per second while nothing
// but the nodes' heartbeats happens.
func backgroundCPU(ctx context.Context, srv *child) (float64, error) {
	c0, err := srv.proc()
	if err != nil {
		return 0, err
	}
	if err := hold(ctx, backgroundWindow); err != nil {
		return 0, err
	}
	c1, err := srv.proc()
	if err != nil {
		return 0, err
	}
	return (c1.CPUSeconds - c0.CPUSeconds) / backgroundWindow.Seconds(), nil
}
