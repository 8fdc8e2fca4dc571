package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/edgesync/edgesync/internal/repo"
)

// TestDeployConfigIsValid loads the config.yaml that deploy/server gives
// the server in a cluster, as the server does at start: an unknown or
// invalid field there would stop every replica.
func TestDeployConfigIsValid(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repo.Root(t), "deploy", "server", "edgesync-server.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var config string
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var cm corev1.ConfigMap
		if err := dec.Decode(&cm); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if cm.Kind == "ConfigMap" && cm.Name == "edgesync-server" {
			config = cm.Data["config.yaml"]
		}
	}
	if config == "" {
		t.Fatal("deploy/server has no ConfigMap edgesync-server with a config.yaml")
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	// The Deployment sets POD_IP from the downward API.
	t.Setenv("POD_IP", "10.1.2.3")
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.validate(); err != nil {
		t.Fatalf("deploy/server's config.yaml: %v", err)
	}
	if cfg.Kubelet.ListenAddress == "" || cfg.Ownership.Namespace == "" {
		t.Errorf("deploy/server runs without the kubelet endpoint (%q) or ownership (%q): kubectl logs/exec or several replicas would not work",
			cfg.Kubelet.ListenAddress, cfg.Ownership.Namespace)
	}
}
