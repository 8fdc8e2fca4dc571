package nodestatus

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/server/feed"
)

// The rules Kubernetes' NodeRestriction admission applies to a kubelet's
// own Node, applied by edgesync to what an edge asks for in its
// NodeRegistration (the server writes the Node with its own credentials,
// so the admission plugin never sees the edge): a node may not give itself
// labels that other workloads select (a nodeSelector or DaemonSet on
// node-role.kubernetes.io/control-plane would send their pods, Secrets
// and tokens to it), nor taints that Kubernetes' own controllers manage.

// restrictedLabelPrefix is refused on any label a node sets: it exists for
// labels that nodes may not set.
const restrictedLabelPrefix = "node-restriction.kubernetes.io/"

// allowedLabels are the labels in the kubernetes.io and k8s.io domains a
// kubelet may set on its Node.
var allowedLabels = []string{
	corev1.LabelHostname,
	corev1.LabelArchStable, corev1.LabelOSStable,
	"beta.kubernetes.io/arch", "beta.kubernetes.io/os",
	corev1.LabelInstanceType, corev1.LabelInstanceTypeStable,
	corev1.LabelFailureDomainBetaRegion, corev1.LabelFailureDomainBetaZone,
	corev1.LabelTopologyRegion, corev1.LabelTopologyZone,
}

// allowedLabelDomains may be set with any name (and their subdomains).
var allowedLabelDomains = []string{"kubelet.kubernetes.io", "node.kubernetes.io"}

// allowedTaints are the taints in the kubernetes.io domain a kubelet sets
// on its own Node at registration.
var allowedTaints = []string{corev1.TaintNodeNotReady, corev1.TaintNodeUnschedulable}

// clusterDomain reports whether a label or taint key's prefix is in the
// kubernetes.io or k8s.io domain.
func clusterDomain(key string) (string, bool) {
	domain, _, ok := strings.Cut(key, "/")
	if !ok {
		return "", false
	}
	domain = strings.ToLower(domain)
	for _, d := range []string{"kubernetes.io", "k8s.io"} {
		if domain == d || strings.HasSuffix(domain, "."+d) {
			return domain, true
		}
	}
	return domain, false
}

func labelAllowed(key, edgeLabel string) bool {
	if key == edgeLabel || slices.Contains(allowedLabels, key) {
		return true
	}
	domain, restricted := clusterDomain(key)
	if !restricted {
		return true
	}
	for _, d := range allowedLabelDomains {
		if domain == d || strings.HasSuffix(domain, "."+d) {
			return true
		}
	}
	return false
}

// checkRegistration refuses the labels and taints node may not set on its
// own Node, naming the first one (in key order) and the rule.
func checkRegistration(node, edgeLabel string, labels map[string]string, taints []corev1.Taint) error {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.HasPrefix(strings.ToLower(k), restrictedLabelPrefix) {
			return feed.Errorf(feed.ErrPermissionDenied,
				"node %q may not set label %q on its Node: the %s prefix is reserved for labels nodes may not set; an operator sets it with kubectl label",
				node, k, restrictedLabelPrefix)
		}
		if !labelAllowed(k, edgeLabel) {
			return feed.Errorf(feed.ErrPermissionDenied,
				"node %q may not set label %q on its Node: labels in the kubernetes.io and k8s.io domains are the cluster's, except %s and the %s domains (the labels Kubernetes' NodeRestriction lets a kubelet set); an operator sets it with kubectl label",
				node, k, strings.Join(allowedLabels, ", "), strings.Join(allowedLabelDomains, " and "))
		}
	}
	for _, t := range taints {
		if _, restricted := clusterDomain(t.Key); restricted && !slices.Contains(allowedTaints, t.Key) {
			return feed.Errorf(feed.ErrPermissionDenied,
				"node %q may not set taint %q on its Node: taints in the kubernetes.io and k8s.io domains are set by Kubernetes' controllers, except %s, which a kubelet sets at registration",
				node, fmt.Sprintf("%s:%s", t.Key, t.Effect), strings.Join(allowedTaints, " and "))
		}
	}
	return nil
}
