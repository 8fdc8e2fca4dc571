// Command edgeapp is an ordinary client-go program, as a user runs in a
// pod on an edge node: it finds the API with rest.InClusterConfig (the
// KUBERNETES_SERVICE_HOST/PORT environment and the files the kubelet
// mounts under /var/run/secrets/kubernetes.io/serviceaccount) and knows
// nothing of edgesync. The edge tests build it and run it as an edge
// pod's ServiceAccount against the node's local API
// (edgeclient/localapi); it prints what it sees as JSON lines.
//
//	edgeapp watch GROUP/VERSION/RESOURCE...   list each in the pod's namespace, then watch it;
//	                                          a watch that closes is resumed from the last
//	                                          version seen (relisting only on 410 Gone)
//	edgeapp list GROUP/VERSION/RESOURCE...    list each, then exit
//	edgeapp scale NAME REPLICAS               patch Deployment NAME's replicas
//
// Core resources are written with an empty group: /v1/configmaps.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// namespaceFile is where the kubelet mounts the pod's namespace.
const namespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Line is one line of output.
type Line struct {
	Op       string            `json:"op"` // list, event, ended, scaled, error
	Resource string            `json:"resource,omitempty"`
	Type     string            `json:"type,omitempty"` // of an event
	Name     string            `json:"name,omitempty"`
	Objects  map[string]string `json:"objects,omitempty"` // a list: name -> summary
	Summary  string            `json:"summary,omitempty"` // spec.replicas or spec.color
	Code     int32             `json:"code,omitempty"`
	Message  string            `json:"message,omitempty"`
}

var out = json.NewEncoder(os.Stdout)

func emit(l Line) { _ = out.Encode(l) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		emit(Line{Op: "error", Code: code(err), Message: err.Error()})
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) < 2 {
		return errors.New("usage: edgeapp watch|list GROUP/VERSION/RESOURCE... | edgeapp scale NAME REPLICAS")
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return err
	}
	ns, err := os.ReadFile(namespaceFile)
	if err != nil {
		return err
	}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	namespace := strings.TrimSpace(string(ns))
	switch args[0] {
	case "scale":
		return scale(ctx, client.Resource(schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}).Namespace(namespace), args[1:])
	case "list", "watch":
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}
	var resources []schema.GroupVersionResource
	for _, a := range args[1:] {
		p := strings.Split(a, "/")
		if len(p) != 3 {
			return fmt.Errorf("resource %q: want GROUP/VERSION/RESOURCE", a)
		}
		resources = append(resources, schema.GroupVersionResource{Group: p[0], Version: p[1], Resource: p[2]})
	}
	if args[0] == "list" {
		for _, gvr := range resources {
			if _, err := list(ctx, client.Resource(gvr).Namespace(namespace), gvr); err != nil {
				return err
			}
		}
		return nil
	}
	done := make(chan struct{}, len(resources))
	for _, gvr := range resources {
		go func() {
			follow(ctx, client.Resource(gvr).Namespace(namespace), gvr)
			done <- struct{}{}
		}()
	}
	for range resources {
		<-done
	}
	return nil
}

func scale(ctx context.Context, deployments dynamic.ResourceInterface, args []string) error {
	if len(args) != 2 {
		return errors.New("usage: edgeapp scale NAME REPLICAS")
	}
	replicas, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	_, err = deployments.Patch(ctx, args[0], types.MergePatchType, fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, replicas), metav1.PatchOptions{})
	if err != nil {
		return err
	}
	emit(Line{Op: "scaled", Name: args[0], Summary: args[1]})
	return nil
}

// list prints the objects of one resource and returns the list's version.
func list(ctx context.Context, r dynamic.ResourceInterface, gvr schema.GroupVersionResource) (string, error) {
	l, err := r.List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list %s: %w", gvr.Resource, err)
	}
	objs := map[string]string{}
	for i := range l.Items {
		objs[l.Items[i].GetName()] = summary(&l.Items[i])
	}
	emit(Line{Op: "list", Resource: gvr.Resource, Objects: objs})
	return l.GetResourceVersion(), nil
}

// follow lists and watches one resource until ctx ends or the API
// refuses it, as a reflector does: a watch that closes is opened again
// from the last version seen.
func follow(ctx context.Context, r dynamic.ResourceInterface, gvr schema.GroupVersionResource) {
	rv, err := list(ctx, r, gvr)
	for ctx.Err() == nil {
		if err != nil {
			emit(Line{Op: "ended", Resource: gvr.Resource, Code: code(err), Message: err.Error()})
			return
		}
		var w watch.Interface
		w, err = r.Watch(ctx, metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true})
		if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			rv, err = list(ctx, r, gvr)
			continue
		}
		if err != nil {
			continue
		}
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				err = apierrors.FromObject(ev.Object)
				break
			}
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			rv = u.GetResourceVersion()
			if ev.Type != watch.Bookmark {
				emit(Line{Op: "event", Resource: gvr.Resource, Type: string(ev.Type), Name: u.GetName(), Summary: summary(u)})
			}
		}
		w.Stop()
		if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			rv, err = list(ctx, r, gvr)
		}
	}
}

// summary is what the tests look at: a Deployment's replicas, a
// Widget's color.
func summary(u *unstructured.Unstructured) string {
	for _, f := range [][]string{{"spec", "replicas"}, {"spec", "color"}} {
		if v, ok, _ := unstructured.NestedFieldNoCopy(u.Object, f...); ok {
			return fmt.Sprint(v)
		}
	}
	return ""
}

// code is the HTTP status of an API error, 0 for other errors.
func code(err error) int32 {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		return st.Status().Code
	}
	return 0
}
