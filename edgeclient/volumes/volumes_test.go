package volumes

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// versionDirs lists the hidden timestamped directories of a volume.
func versionDirs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "..") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestWriteAtomicSwapsEveryFileAtOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "config")
	changed, err := WriteAtomic(dir, map[string]File{"a": {Data: []byte("1"), Mode: 0o644}, "sub/b": {Data: []byte("2"), Mode: 0o600}})
	if err != nil || !changed {
		t.Fatalf("first write: changed %v, %v", changed, err)
	}
	first, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatalf("..data: %v", err)
	}
	// What a pod reads goes through ..data.
	for name, want := range map[string]string{"a": "..data/a", "sub": "..data/sub"} {
		if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != want {
			t.Errorf("%s -> %q (%v), want a symlink to %s", name, got, err, want)
		}
	}
	if got := read(t, filepath.Join(dir, "sub/b")); got != "2" {
		t.Errorf("sub/b = %q", got)
	}
	if info, _ := os.Stat(filepath.Join(dir, "sub/b")); info.Mode().Perm() != 0o600 {
		t.Errorf("sub/b mode %v, want 0600", info.Mode().Perm())
	}

	if changed, err := WriteAtomic(dir, map[string]File{"a": {Data: []byte("1"), Mode: 0o644}, "sub/b": {Data: []byte("2"), Mode: 0o600}}); err != nil || changed {
		t.Fatalf("same payload: changed %v, %v; want nothing written", changed, err)
	}

	// An update: a new version behind ..data, the old one gone, a removed
	// file's entry gone.
	if changed, err := WriteAtomic(dir, map[string]File{"a": {Data: []byte("one"), Mode: 0o644}, "c": {Data: []byte("3"), Mode: 0o644}}); err != nil || !changed {
		t.Fatalf("update: changed %v, %v", changed, err)
	}
	second, _ := os.Readlink(filepath.Join(dir, "..data"))
	if second == first {
		t.Fatalf("..data still points at %s", first)
	}
	if got := read(t, filepath.Join(dir, "a")); got != "one" {
		t.Errorf("a = %q after the update", got)
	}
	if got := read(t, filepath.Join(dir, "c")); got != "3" {
		t.Errorf("c = %q", got)
	}
	if _, err := os.Lstat(filepath.Join(dir, "sub")); !os.IsNotExist(err) {
		t.Errorf("sub still present after it left the payload: %v", err)
	}
	if v := versionDirs(t, dir); len(v) != 1 || v[0] != second {
		t.Errorf("versions on disk %v, want only %s", v, second)
	}
}

func TestWriteAtomicRefusesPathsOutsideTheVolume(t *testing.T) {
	for _, p := range []string{"../x", "/etc/passwd", "a/../../b", "..data"} {
		if _, err := WriteAtomic(t.TempDir(), map[string]File{p: {Data: []byte("x"), Mode: 0o644}}); err == nil {
			t.Errorf("path %q accepted", p)
		}
	}
}

// fakeSource holds a few objects.
type fakeSource struct {
	cms     map[string]*corev1.ConfigMap
	secrets map[string]*corev1.Secret
	tokens  map[string]*edgesyncv1.ServiceAccountToken
}

func (f fakeSource) ConfigMap(_, name string) *corev1.ConfigMap { return f.cms[name] }
func (f fakeSource) Secret(_, name string) *corev1.Secret       { return f.secrets[name] }
func (f fakeSource) Token(_, pod, volume, path string) *edgesyncv1.ServiceAccountToken {
	return f.tokens[pod+"/"+volume+"/"+path]
}

func TestSyncWritesWhatThePodMounts(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web", UID: "uid-1", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{Volumes: []corev1.Volume{
			{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}}}},
			{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "app", Items: []corev1.KeyToPath{{Key: "password", Path: "pw"}}}}},
			{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
				{Path: "app", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}},
			}}}},
			{Name: "kube-api-access-x", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}},
			}}}},
			{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		}},
	}
	src := fakeSource{
		cms: map[string]*corev1.ConfigMap{
			"app":              {Data: map[string]string{"greeting": "hello"}},
			"kube-root-ca.crt": {Data: map[string]string{"ca.crt": "CA"}},
		},
		secrets: map[string]*corev1.Secret{"app": {Data: map[string][]byte{"password": []byte("s3cret"), "other": []byte("x")}}},
		tokens:  map[string]*edgesyncv1.ServiceAccountToken{"web/kube-api-access-x/token": {Token: "jwt"}},
	}
	d := New(t.TempDir())
	changed, err := d.Sync(pod, src)
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 4 {
		t.Errorf("changed volumes %v, want the four it materialises", changed)
	}
	for rel, want := range map[string]string{
		"config/greeting":             "hello",
		"creds/pw":                    "s3cret",
		"info/labels":                 `app="web"`,
		"info/app":                    "web",
		"kube-api-access-x/token":     "jwt",
		"kube-api-access-x/ca.crt":    "CA",
		"kube-api-access-x/namespace": "demo",
	} {
		if got := read(t, filepath.Join(d.VolumeDir("uid-1", ""), rel)); got != want {
			t.Errorf("%s = %q, want %q", rel, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(d.VolumeDir("uid-1", "creds"), "other")); !os.IsNotExist(err) {
		t.Errorf("a secret key not listed in items was written: %v", err)
	}
	if info, _ := os.Stat(filepath.Join(d.VolumeDir("uid-1", "kube-api-access-x"), "token")); info.Mode().Perm() != 0o600 {
		t.Errorf("token mode %v, want 0600", info.Mode().Perm())
	}

	// A new token changes only its volume.
	src.tokens["web/kube-api-access-x/token"] = &edgesyncv1.ServiceAccountToken{Token: "jwt2"}
	if changed, err := d.Sync(pod, src); err != nil || len(changed) != 1 || changed[0] != "kube-api-access-x" {
		t.Fatalf("after a new token: changed %v, %v", changed, err)
	}
	if err := d.Remove("uid-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.PodDir("uid-1")); !os.IsNotExist(err) {
		t.Errorf("pod directory left behind: %v", err)
	}
}
