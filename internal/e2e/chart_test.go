package e2e_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/edgesync/edgesync/internal/release"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// chart is deploy/charts/edgesync and the pinned helm (bin/helm).
type chart struct {
	dir, helm string
}

func newChart(t *testing.T) chart {
	t.Helper()
	return chart{dir: filepath.Join(repo.Root(t), "deploy", "charts", "edgesync"), helm: repo.Binary(t, "helm")}
}

// template renders the chart as release "edgesync" in namespace with the
// given extra helm flags and returns its objects.
func (c chart) template(t *testing.T, namespace string, flags ...string) []unstructured.Unstructured {
	t.Helper()
	args := append([]string{"template", "edgesync", c.dir, "--namespace", namespace}, flags...)
	return decodeObjects(t, run(t, nil, c.helm, args...))
}

// TestChartRenders checks what `helm install` would create, without a
// cluster: helm lint passes; by default the CRDs and RBAC of deploy/, the
// server Deployment spread over nodes with its PDB, both Services, the
// config (replicas owning nodes through Leases in the namespace) and
// a generated CA and serving certificate; a ServiceMonitor only where the
// Prometheus operator is installed; no Secret when you bring your own.
func TestChartRenders(t *testing.T) {
	c := newChart(t)
	run(t, nil, c.helm, "lint", "--strict", c.dir)

	objs := c.template(t, "edgesync-system", "--include-crds")
	byKind := map[string][]unstructured.Unstructured{}
	for _, o := range objs {
		byKind[o.GetKind()] = append(byKind[o.GetKind()], o)
	}
	want := map[string]int{
		"ServiceAccount": 1, "ConfigMap": 1, "Secret": 1, "Deployment": 1,
		"PodDisruptionBudget": 1, "Service": 2, "ServiceMonitor": 0,
	}
	root := repo.Root(t)
	for _, o := range decodeObjects(t, readFile(t, filepath.Join(root, "deploy", "rbac", "edgesync-server.yaml"))) {
		want[o.GetKind()]++
	}
	crds, err := filepath.Glob(filepath.Join(root, "deploy", "crds", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want["CustomResourceDefinition"] = len(crds)
	for kind, want := range want {
		if got := len(byKind[kind]); got != want {
			t.Errorf("the chart renders %d %s, want %d", got, kind, want)
		}
	}
	if len(byKind["Deployment"]) == 1 {
		var d appsv1.Deployment
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(byKind["Deployment"][0].Object, &d); err != nil {
			t.Fatal(err)
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
			t.Errorf("the Deployment runs %v replicas, want 2", d.Spec.Replicas)
		}
		pod := d.Spec.Template.Spec
		if pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil {
			t.Error("the Deployment does not spread its replicas over nodes (no podAntiAffinity)")
		}
		if want := ":" + makefileVersion(t); !strings.HasSuffix(pod.Containers[0].Image, want) {
			t.Errorf("the Deployment runs image %s, want the release's %s", pod.Containers[0].Image, want)
		}
		if sc := pod.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Error("the server's pod may run as root")
		} else if sc.FSGroup == nil || *sc.FSGroup != release.UID {
			t.Errorf("the pod's fsGroup is %v, want %d: the non-root server could not read its certificate Secret (mode 0400)", sc.FSGroup, release.UID)
		}
	}
	if len(byKind["ConfigMap"]) == 1 {
		data, _, _ := unstructured.NestedString(byKind["ConfigMap"][0].Object, "data", "config.yaml")
		var config struct{ Ownership struct{ Namespace string } }
		if err := yaml.Unmarshal([]byte(data), &config); err != nil {
			t.Fatal(err)
		}
		if config.Ownership.Namespace != "edgesync-system" {
			t.Errorf("two replicas without node ownership (ownership.namespace %q): both would serve and write for the same node", config.Ownership.Namespace)
		}
	}
	if len(byKind["Secret"]) == 1 {
		data, _, _ := unstructured.NestedStringMap(byKind["Secret"][0].Object, "data")
		for _, key := range []string{"ca.crt", "server.crt", "server.key"} {
			if data[key] == "" {
				t.Errorf("the generated TLS Secret has no %s", key)
			}
		}
	}

	withOperator := c.template(t, "edgesync-system", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
	if !slices.ContainsFunc(withOperator, func(o unstructured.Unstructured) bool { return o.GetKind() == "ServiceMonitor" }) {
		t.Error("no ServiceMonitor although the Prometheus operator's CRD is installed")
	}

	own := c.template(t, "edgesync-system", "--set", "tls.existingSecret=my-tls", "--set", "replicas=1")
	for _, o := range own {
		switch o.GetKind() {
		case "Secret":
			t.Errorf("the chart makes Secret %s although tls.existingSecret is set", o.GetName())
		case "PodDisruptionBudget":
			t.Error("a PodDisruptionBudget for a single replica would block node drains")
		case "Deployment":
			vols, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "volumes")
			if !strings.Contains(strings.Join(strings.Fields(toYAML(t, vols)), " "), "secretName: my-tls") {
				t.Errorf("the Deployment does not mount tls.existingSecret my-tls: %s", toYAML(t, vols))
			}
		}
	}
}

// TestChartMatchesTheServer keeps the chart and the rest of the repository
// in step: its config is every server setting with its default
// (--print-default-config), its RBAC rules are deploy/rbac's (which it
// reads through a link, as it does deploy/crds), its appVersion is the
// Makefile's VERSION.
func TestChartMatchesTheServer(t *testing.T) {
	c := newChart(t)
	root := repo.Root(t)
	objs := c.template(t, "edgesync-system")

	var defaults map[string]any
	if err := yaml.Unmarshal([]byte(run(t, nil, repo.Binary(t, "edgesync-server"), "--print-default-config")), &defaults); err != nil {
		t.Fatal(err)
	}
	var values struct{ Config map[string]any }
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(c.dir, "values.yaml"))), &values); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(defaults, values.Config) {
		t.Errorf("the chart's config (values.yaml, config:) is not `edgesync-server --print-default-config`; run `make chart-config`:\nchart:\n%s\nserver:\n%s",
			toYAML(t, values.Config), toYAML(t, defaults))
	}

	want := rbacRules(t, decodeObjects(t, readFile(t, filepath.Join(root, "deploy", "rbac", "edgesync-server.yaml"))))
	if got := rbacRules(t, objs); !reflect.DeepEqual(got, want) {
		t.Errorf("the chart's RBAC rules differ from deploy/rbac's:\nchart:\n%s\ndeploy/rbac:\n%s", toYAML(t, got), toYAML(t, want))
	}

	var meta struct{ AppVersion string }
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(c.dir, "Chart.yaml"))), &meta); err != nil {
		t.Fatal(err)
	}
	if v := makefileVersion(t); meta.AppVersion != v {
		t.Errorf("Chart.yaml's appVersion is %s, the Makefile builds %s", meta.AppVersion, v)
	}
}

// TestChartIsAcceptedByTheAPIServer has the devcluster's kube-apiserver
// validate everything the chart installs (server-side dry run), CRDs
// included.
func TestChartIsAcceptedByTheAPIServer(t *testing.T) {
	c := newChart(t)
	in := install(t)
	ns := testcluster.Namespace(t, testcluster.Client(t))
	rendered := run(t, nil, c.helm, "template", "edgesync", c.dir, "--namespace", ns, "--include-crds")
	file := filepath.Join(t.TempDir(), "chart.yaml")
	if err := os.WriteFile(file, []byte(rendered), 0o600); err != nil {
		t.Fatal(err)
	}
	out := run(t, in.adminEnv(), in.kubectl, "apply", "--server-side", "--dry-run=server", "-f", file)
	for _, want := range []string{
		"customresourcedefinition.apiextensions.k8s.io/devices.devices.kubeedge.io",
		"clusterrole.rbac.authorization.k8s.io/edgesync", "role.rbac.authorization.k8s.io/edgesync-records",
		"deployment.apps/edgesync", "service/edgesync", "service/edgesync-metrics", "configmap/edgesync",
		"secret/edgesync-tls", "poddisruptionbudget.policy/edgesync", "serviceaccount/edgesync",
		"flowschema.flowcontrol.apiserver.k8s.io/edgesync-" + ns + "-node-leases",
		"prioritylevelconfiguration.flowcontrol.apiserver.k8s.io/edgesync-" + ns + "-node-leases",
	} {
		if !strings.Contains(out, want+" serverside-applied") {
			t.Errorf("the server-side dry run did not accept %s:\n%s", want, out)
		}
	}
}

// rbacRules are the rules of each ClusterRole and Role, by kind and
// namespace.
func rbacRules(t *testing.T, objs []unstructured.Unstructured) map[string][]rbacv1.PolicyRule {
	t.Helper()
	rules := map[string][]rbacv1.PolicyRule{}
	for _, o := range objs {
		if o.GetKind() != "ClusterRole" && o.GetKind() != "Role" {
			continue
		}
		var role rbacv1.ClusterRole // a Role has the same rules field
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &role); err != nil {
			t.Fatal(err)
		}
		rules[o.GetKind()+" in "+o.GetNamespace()] = role.Rules
	}
	return rules
}

func decodeObjects(t *testing.T, manifests string) []unstructured.Unstructured {
	t.Helper()
	var objs []unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	for {
		var o unstructured.Unstructured
		if err := dec.Decode(&o.Object); errors.Is(err, io.EOF) {
			return objs
		} else if err != nil {
			t.Fatal(err)
		}
		if len(o.Object) > 0 {
			objs = append(objs, o)
		}
	}
}

// makefileVersion is VERSION in the Makefile: what binaries, images and
// deploy/ are stamped with.
func makefileVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^VERSION \?= (\S+)$`).FindStringSubmatch(readFile(t, filepath.Join(repo.Root(t), "Makefile")))
	if m == nil {
		t.Fatal("the Makefile sets no VERSION")
	}
	return m[1]
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func toYAML(t *testing.T, v any) string {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSpace(b))
}

// TestChartRunsTheServer runs edgesync-server as the chart's pod would: with
// the configuration file it renders (every field must be one the server
// knows) and the CA and serving certificate it generates, as the
// ServiceAccount its RBAC binds; an admin certificate signed by that CA
// finds it SERVING at the address the certificate was made for. Only the
// mount paths and addresses are the test's.
func TestChartRunsTheServer(t *testing.T) {
	c := newChart(t)
	testcluster.RESTConfig(t) // skips or fails when there is no devcluster
	kubeconfig := os.Getenv(testcluster.KubeconfigEnv)
	admin := []string{"KUBECONFIG=" + kubeconfig}
	kubectl, server, grpcurl := repo.Binary(t, "kubectl"), repo.Binary(t, "edgesync-server"), repo.Binary(t, "grpcurl")

	// One replica: node ownership (on with several) would join the Leases
	// of the other tests' replicas.
	// The router on, as config.router.listenAddress turns it on.
	objs := c.template(t, "edgesync-system", "--set", "replicas=1", "--set", "tls.generate.ipAddresses={127.0.0.1}",
		"--set", "config.router.listenAddress=:9443")
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yaml")
	pki := filepath.Join(dir, "pki")
	if err := os.Mkdir(pki, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		switch o.GetKind() {
		case "ConfigMap":
			data, _, _ := unstructured.NestedString(o.Object, "data", "config.yaml")
			if err := os.WriteFile(config, []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
		case "Secret":
			data, _, _ := unstructured.NestedStringMap(o.Object, "data")
			for name, b64 := range data {
				b, err := base64.StdEncoding.DecodeString(b64)
				if err != nil {
					t.Fatalf("Secret key %s: %v", name, err)
				}
				if err := os.WriteFile(filepath.Join(pki, name), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}

	// The chart's RBAC is deploy/rbac's (TestChartMatchesTheServer), bound
	// to the ServiceAccount edgesync-server in edgesync-system.
	run(t, admin, kubectl, "apply", "-f", filepath.Join(repo.Root(t), "deploy", "namespace.yaml"),
		"-f", filepath.Join(repo.Root(t), "deploy", "rbac"))
	token := strings.TrimSpace(run(t, admin, kubectl, "-n", "edgesync-system", "create", "token", "edgesync-server", "--duration=1h"))

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	rest := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := start(t, "edgesync-server", nil, server,
		"--config", config,
		"--listen", addr,
		"--router-listen", rest,
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--tls-ca", filepath.Join(pki, "ca.crt"),
		"--tls-cert", filepath.Join(pki, "server.crt"),
		"--tls-key", filepath.Join(pki, "server.key"),
		"--bootstrap-ca-key", filepath.Join(pki, "ca.key"),
		"--kubeconfig", writeTokenKubeconfig(t, kubeconfig, token),
		"--server-id", testcluster.UniqueName("chart"))
	run(t, nil, server, "certs", "admin", "chart", "--dir", pki)
	eventually(t, time.Minute, "the server to report SERVING", func() error {
		out, err := tryRun(grpcurl,
			"-cacert", filepath.Join(pki, "ca.crt"),
			"-cert", filepath.Join(pki, "admin-chart.crt"),
			"-key", filepath.Join(pki, "admin-chart.key"),
			addr, "grpc.health.v1.Health/Check")
		if err == nil && !strings.Contains(out, `"SERVING"`) {
			err = fmt.Errorf("health: %s", out)
		}
		return err
	}, p)

	// Cloud applications reach the router's REST port by its Service's
	// name, which the generated certificate carries; without a token
	// they are refused.
	caPEM, err := os.ReadFile(filepath.Join(pki, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	https := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: roots, ServerName: "edgesync-router.edgesync-system.svc",
	}}}
	resp, err := https.Post("https://"+rest+"/edge-1/default/a", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatalf("the router's REST port with the chart's certificate, as its Service's name: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a call without a token: %s, want 401", resp.Status)
	}
}
