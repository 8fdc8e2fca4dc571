package image

import (
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/edgesync/edgesync/internal/release"
)

// TestImagesAreReproducible: the same binaries give the same digest, on
// any day; another binary or another version gives another.
func TestImagesAreReproducible(t *testing.T) {
	opts := Options{Version: "v1.2.3", Commit: "abc", Created: time.Unix(0, 0).UTC()}
	binaries := func(content string) func(release.Platform) ([]byte, error) {
		return func(p release.Platform) ([]byte, error) { return []byte(content + " for " + p.String()), nil }
	}
	digest := func(opts Options, content string) string {
		t.Helper()
		idx, err := Index(opts, release.Agent, binaries(content))
		if err != nil {
			t.Fatal(err)
		}
		d, err := idx.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d.String()
	}
	first := digest(opts, "agent")
	if again := digest(opts, "agent"); again != first {
		t.Errorf("the same binaries gave %s, then %s", first, again)
	}
	if other := digest(opts, "patched agent"); other == first {
		t.Error("another binary gave the same digest")
	}
	newer := opts
	newer.Version = "v1.2.4"
	if other := digest(newer, "agent"); other == first {
		t.Error("another version gave the same digest")
	}
}

// TestLayoutIsTagged: skopeo and crane find the index by its tag.
func TestLayoutIsTagged(t *testing.T) {
	idx, err := Index(Options{Version: "v1.2.3", Commit: "abc"}, release.Server,
		func(release.Platform) ([]byte, error) { return []byte("server"), nil })
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := WriteLayout(dir, idx, "v1.2.3"); err != nil {
		t.Fatal(err)
	}
	l, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := l.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	want, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 || m.Manifests[0].Digest != want ||
		m.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v1.2.3" {
		t.Errorf("the layout holds %+v, want one index %s tagged v1.2.3", m.Manifests, want)
	}
}
