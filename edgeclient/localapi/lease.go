package localapi

import (
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
)

// The node's Lease lives on the node: the kubelet renews it here, and each
// create or update is a Heartbeat, with which the cloud renews the Lease
// in the cluster.

func readOwnLease(s *Server, req *Request) error {
	if req.Namespace != corev1.NamespaceNodeLease || req.Name != s.node {
		return forbidden(req, fmt.Sprintf("node %q may use only its own Lease, %s/%s", s.node, corev1.NamespaceNodeLease, s.node))
	}
	return nil
}

func createLease(s *Server, req *Request) (int, runtime.Object, error) {
	code, obj, err := s.createLocal(req, req.Resource.New(), func(name string) error {
		return readOwnLease(s, &Request{Resource: req.Resource, Namespace: req.Namespace, Name: name})
	})
	if err != nil {
		return 0, nil, err
	}
	if err := s.heartbeat(req, obj); err != nil {
		return 0, nil, err
	}
	return code, obj, nil
}

func updateLease(s *Server, req *Request) (int, runtime.Object, error) {
	if err := readOwnLease(s, req); err != nil {
		return 0, nil, err
	}
	return s.updateLocal(req, func(obj runtime.Object) error { return s.heartbeat(req, obj) })
}

func patchLease(s *Server, req *Request) (int, runtime.Object, error) {
	if err := readOwnLease(s, req); err != nil {
		return 0, nil, err
	}
	return s.patchLocal(req, func(obj runtime.Object) error { return s.heartbeat(req, obj) })
}

// heartbeat sends a Heartbeat for a Lease renewal. The cloud's NOT_FOUND
// (the Node does not exist yet) is no error of the Lease's: the client
// registers the node again by itself.
func (s *Server) heartbeat(req *Request, lease runtime.Object) error {
	if l, ok := lease.(*coordinationv1.Lease); ok {
		d := 40 * time.Second // the kubelet's default nodeLeaseDurationSeconds
		if l.Spec.LeaseDurationSeconds != nil && *l.Spec.LeaseDurationSeconds > 0 {
			d = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
		}
		s.mu.Lock()
		s.leaseUntil = time.Now().Add(d)
		s.mu.Unlock()
	}
	w, err := s.client.Heartbeat()
	err = s.awaitReport(req, w, err)
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
