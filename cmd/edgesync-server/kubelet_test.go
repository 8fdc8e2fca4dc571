package main

import (
	"strings"
	"testing"
)

// The kubelet endpoint's settings are checked before anything starts,
// with the field and what to do named.
func TestKubeletEndpointSettings(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"no client CA", []string{"--kubelet-listen", "127.0.0.1:10250"}, []string{"kubelet.clientCAFile", "kubelet client certificate"}},
		{"no address the apiserver can dial", []string{"--kubelet-listen", ":10250", "--kubelet-client-ca", "ca.crt"}, []string{"kubelet.advertiseAddress", "pod IP"}},
		{"POD_IP not an IP", []string{"--kubelet-listen", ":10250", "--kubelet-client-ca", "ca.crt"}, []string{"kubelet.advertiseAddress", "POD_IP"}},
		{"bad listen address", []string{"--kubelet-listen", "10250", "--kubelet-client-ca", "ca.crt"}, []string{"kubelet.listenAddress", "host:port"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if strings.HasPrefix(tt.name, "POD_IP") {
				t.Setenv("POD_IP", "edge-pod")
			}
			_, err := execute(t, append(tt.args, "--tls-ca", "x", "--tls-cert", "x", "--tls-key", "x", "--kubeconfig", "x")...)
			if err == nil {
				t.Fatal("bad kubelet settings accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// In a cluster the server listens on every address and advertises the pod
// IP the downward API gives it.
func TestKubeletAdvertisesPodIP(t *testing.T) {
	t.Setenv("POD_IP", "10.1.2.3")
	cfg := defaultConfig()
	cfg.Kubelet.ListenAddress, cfg.Kubelet.ClientCAFile = ":10250", "/etc/kubernetes/ca.crt"
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	if got := cfg.Kubelet.advertise(); got != "10.1.2.3" {
		t.Errorf("advertised %q, want the pod IP", got)
	}
}
