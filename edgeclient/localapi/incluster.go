package localapi

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// How a pod finds the local API with rest.InClusterConfig, unchanged.
//
// client-go's InClusterConfig reads KUBERNETES_SERVICE_HOST and
// KUBERNETES_SERVICE_PORT, and the files the kubelet mounts at
// /var/run/secrets/kubernetes.io/serviceaccount: token (a TokenRequest the
// kubelet makes, answered here with the token the cloud pushed for the
// pod) and ca.crt (the key ca.crt of the ConfigMap kube-root-ca.crt in the
// pod's namespace). The kubelet sets the two variables from the Service
// default/kubernetes it reads here. So, with Options.ApplicationsAddress:
//
//   - the Service default/kubernetes served is a synthetic one whose
//     clusterIP and port are that address (a Service of that name the
//     cloud sends is not served in its place), and
//   - every kube-root-ca.crt ConfigMap is served with the local API's CA
//     appended to its ca.crt, so the pod trusts the local API (and still
//     the cluster's API server).
//
// The address must be one the pods reach: loopback for host-network pods,
// an address of the node on the pods' network otherwise (the CNI bridge's
// gateway, the node's IP); the serving certificate must name it
// (EnsureCredentials' hosts).

// rootCAConfigMap is the ConfigMap the kubelet projects as ca.crt.
const rootCAConfigMap = "kube-root-ca.crt"

// inCluster is what the local API changes in what it serves so that pods
// find it: the synthetic Service and the CA appended to ca.crt.
type inCluster struct {
	service *corev1.Service
	caPEM   []byte
}

func newInCluster(address string, creds *Credentials) (*inCluster, error) {
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("localapi: applications address %q: %w", address, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 || net.ParseIP(host) == nil {
		return nil, fmt.Errorf("localapi: applications address %q must be IP:port (the clusterIP and port pods are told)", address)
	}
	if creds == nil {
		return nil, fmt.Errorf("localapi: Options.ApplicationsAddress needs Options.Credentials (the CA pods are told to trust)")
	}
	ca, err := os.ReadFile(creds.CAPath())
	if err != nil {
		return nil, fmt.Errorf("localapi: read the local API's CA: %w", err)
	}
	family := corev1.IPv4Protocol
	if net.ParseIP(host).To4() == nil {
		family = corev1.IPv6Protocol
	}
	svc := &corev1.Service{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace: metav1.NamespaceDefault, Name: "kubernetes",
			Labels: map[string]string{"component": "apiserver", "provider": "kubernetes"},
			Annotations: map[string]string{
				"edgesync.io/local-api": "the node's local API, where its pods' client-go programs read the cluster",
			},
		},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: host, ClusterIPs: []string{host},
			IPFamilies: []corev1.IPFamily{family},
			Ports: []corev1.ServicePort{{
				Name: "https", Protocol: corev1.ProtocolTCP, Port: int32(port), TargetPort: intstr.FromInt32(int32(port)),
			}},
			SessionAffinity: corev1.ServiceAffinityNone,
		},
	}
	return &inCluster{service: svc, caPEM: ca}, nil
}

// isKubernetesService reports whether the Service namespace/name is the
// one pods are told the API server's address by.
func isKubernetesService(namespace, name string) bool {
	return namespace == metav1.NamespaceDefault && name == "kubernetes"
}

// rootCA is cm with the local API's CA appended to its ca.crt when it is a
// kube-root-ca.crt; cm itself otherwise.
func (ic *inCluster) rootCA(cm *corev1.ConfigMap) *corev1.ConfigMap {
	if cm.Name != rootCAConfigMap {
		return cm
	}
	out := cm.DeepCopy()
	if out.Data == nil {
		out.Data = map[string]string{}
	}
	ca := out.Data["ca.crt"]
	if ca != "" && !bytes.HasSuffix([]byte(ca), []byte("\n")) {
		ca += "\n"
	}
	out.Data["ca.crt"] = ca + string(ic.caPEM)
	return out
}
