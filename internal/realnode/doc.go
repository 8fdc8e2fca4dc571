// Package realnode runs the real parts of an edge node on this machine,
// for the end-to-end tests, `make dev` and the benchmarks: a containerd of
// its own (Debian's containerd and runc, root, state, socket, runc root,
// CNI configuration and IP allocations in one directory, a bridge and
// subnet of its own, restrict_oom_score_adj on), the images pods run
// (built here from the host's static busybox with go-containerregistry and
// imported with the containerd client: nothing is pulled), and the stock
// kubelet (bin/kubelet, built from k8s.io/kubernetes at the devcluster's
// version) started with a configuration file written here.
//
// Everything is stopped by process id, never by name, and cleaned up:
// pod sandboxes are removed through the CRI (which releases their IPs and
// network namespaces), then containerd is stopped, the mounts left under
// the directories (the kubelet's bind mount of its root directory, volume
// mounts, container root file systems) are detached, the bridge deleted
// and what containerd leaves empty under /run/containerd removed.
//
// A real node needs root and the Debian packages containerd, runc,
// containernetworking-plugins and busybox-static (`make realnode-deps`);
// Unsupported says what is missing.
package realnode
