// Package e2e holds the end-to-end tests: the real binaries (devcluster's
// kube-apiserver, edgesync-server running as its RBAC-bound ServiceAccount,
// edgesync-agent, grpcurl and a generated Python edge client) working
// together exactly as `make dev` runs them.
package e2e
