package e2e_test

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// routerChart is what the chart renders for KubeEdge's router.
type routerChart struct {
	service    *corev1.Service // the router's, nil when none
	deployment appsv1.Deployment
	config     struct {
		Router struct {
			ListenAddress, CertFile, KeyFile, PeerCAFile, PeerServerName string
		}
	}
	serverCert *x509.Certificate // the generated one, nil with your own
}

func renderRouter(t *testing.T, flags ...string) routerChart {
	t.Helper()
	var out routerChart
	for _, o := range newChart(t).template(t, "edgesync-system", flags...) {
		switch o.GetKind() {
		case "Service":
			if o.GetName() == "edgesync-router" {
				out.service = &corev1.Service{}
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, out.service); err != nil {
					t.Fatal(err)
				}
			}
		case "Deployment":
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &out.deployment); err != nil {
				t.Fatal(err)
			}
		case "ConfigMap":
			data, _, _ := unstructured.NestedString(o.Object, "data", "config.yaml")
			if err := yaml.Unmarshal([]byte(data), &out.config); err != nil {
				t.Fatal(err)
			}
		case "Secret":
			b64, _, _ := unstructured.NestedString(o.Object, "data", "server.crt")
			der, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				t.Fatal(err)
			}
			block, _ := pem.Decode(der)
			if block == nil {
				t.Fatal("the generated server.crt is not PEM")
			}
			if out.serverCert, err = x509.ParseCertificate(block.Bytes); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

func (r routerChart) port(name string) (corev1.ContainerPort, bool) {
	for _, p := range r.deployment.Spec.Template.Spec.Containers[0].Ports {
		if p.Name == name {
			return p, true
		}
	}
	return corev1.ContainerPort{}, false
}

// TestChartServesTheRouter: the router's REST port is off by default; one
// value (config.router.listenAddress) opens it on the pod and behind a
// Service of its own inside the cluster, served with a certificate that
// carries that Service's name (generated, or router.tls.existingSecret),
// which is also the name replicas forwarding calls to each other verify.
func TestChartServesTheRouter(t *testing.T) {
	off := renderRouter(t)
	if off.service != nil {
		t.Error("the router's Service is rendered although config.router.listenAddress is empty")
	}
	if _, ok := off.port("router"); ok {
		t.Error("the pod opens a router port although config.router.listenAddress is empty")
	}
	// The generated certificate is made once, at install: it names the
	// router's Service even while the router is off, so that turning it
	// on later needs no new CA.
	if off.serverCert == nil {
		t.Fatal("no generated certificate")
	}
	if err := off.serverCert.VerifyHostname("edgesync-router.edgesync-system.svc"); err != nil {
		t.Errorf("the generated serving certificate is not valid for the router's Service: %v", err)
	}

	on := renderRouter(t, "--set", "config.router.listenAddress=:9443")
	if on.service == nil {
		t.Fatal("no router Service with config.router.listenAddress set")
	}
	if on.service.Spec.Type != corev1.ServiceTypeClusterIP || len(on.service.Spec.Ports) != 1 ||
		on.service.Spec.Ports[0].Port != 9443 || on.service.Spec.Ports[0].TargetPort.String() != "router" {
		t.Errorf("the router's Service is %s %+v, want ClusterIP port 9443 to the pod's router port", on.service.Spec.Type, on.service.Spec.Ports)
	}
	if p, ok := on.port("router"); !ok || p.ContainerPort != 9443 {
		t.Errorf("the pod's router port is %+v (present %v), want 9443", p, ok)
	}
	env := on.deployment.Spec.Template.Spec.Containers[0].Env
	if !slices.ContainsFunc(env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
	}) {
		t.Error("no POD_IP in the server's environment: a replica listening on :9443 could not tell the others where its REST port is")
	}
	if rc := on.config.Router; rc.ListenAddress != ":9443" || rc.PeerServerName != "edgesync-router.edgesync-system.svc" || rc.CertFile != "" {
		t.Errorf("router config %+v, want listenAddress :9443, the server's certificate and peers verified as edgesync-router.edgesync-system.svc", rc)
	}

	own := renderRouter(t, "--set", "config.router.listenAddress=:9443", "--set", "router.tls.existingSecret=my-router-tls",
		"--set", "router.service.port=443")
	rc := own.config.Router
	if rc.CertFile != "/etc/edgesync/router-pki/tls.crt" || rc.KeyFile != "/etc/edgesync/router-pki/tls.key" || rc.PeerCAFile != "/etc/edgesync/router-pki/ca.crt" {
		t.Errorf("router config %+v, want the certificate, key and CA of router.tls.existingSecret", rc)
	}
	pod := own.deployment.Spec.Template.Spec
	if !slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool {
		return v.Secret != nil && v.Secret.SecretName == "my-router-tls"
	}) || !slices.ContainsFunc(pod.Containers[0].VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.MountPath == "/etc/edgesync/router-pki"
	}) {
		t.Errorf("router.tls.existingSecret my-router-tls is not mounted at /etc/edgesync/router-pki: %+v", pod.Volumes)
	}
	if own.service == nil || own.service.Spec.Ports[0].Port != 443 {
		t.Error("router.service.port 443 is not the router Service's port")
	}
}
