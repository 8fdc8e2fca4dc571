package main

import (
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzLoadConfig: whatever a configuration file holds, loading and
// validating it returns a configuration or an error naming what is wrong;
// a configuration that validates is written back and loads the same.
func FuzzLoadConfig(f *testing.F) {
	def, err := yaml.Marshal(defaultConfig())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(def)
	f.Add([]byte("ownership:\n  namespace: edgesync-system\n  leaseDuration: 9s\nheartbeatInterval: 5s\n"))
	f.Add([]byte("heartbeatInterval: -1s\nackWindow: 0\nlog:\n  level: loud\n"))
	f.Add([]byte("listenAddress: [\n"))
	f.Add([]byte("unknownField: 1\n"))
	// One file per fuzzing process, which runs the target one input at a
	// time: a directory per input would cost more than the parsing.
	path := filepath.Join(f.TempDir(), "config.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := loadConfig(path)
		if err != nil {
			return
		}
		if cfg.validate() != nil {
			return
		}
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatalf("a valid configuration does not encode: %v", err)
		}
		if err := os.WriteFile(path, out, 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := loadConfig(path)
		if err != nil {
			t.Fatalf("a valid configuration written back does not load: %v\n%s", err, out)
		}
		if err := again.validate(); err != nil {
			t.Fatalf("a valid configuration written back does not validate: %v\n%s", err, out)
		}
	})
}
