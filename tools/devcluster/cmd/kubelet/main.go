// Command kubelet is the upstream kubelet, built from k8s.io/kubernetes at
// the devcluster's version, so that a real edge node (containerd + the
// kubelet + edgesync-agent --runtime kubelet) needs nothing but Go and
// Debian's containerd on a fresh machine. The Makefile stamps its version
// (k8s.io/component-base/version) from go.mod, as Kubernetes' release
// build does, so the Node reports the kubelet version it really is.
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	command := app.NewKubeletCommand(context.Background())
	os.Exit(cli.Run(command))
}
