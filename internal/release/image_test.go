package release_test

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/edgesync/edgesync/internal/release"
	"github.com/edgesync/edgesync/internal/repo"
)

// TestImagesRoundTripThroughARegistry does what a user does with the
// images `make image` writes: push each to a registry, pull it back, and
// run it on either CPU. Each is a multi-arch index for linux/amd64 and
// linux/arm64 tagged with the release version; each platform's image runs
// its static binary (for that CPU) as the entrypoint, as uid 65532 which
// its /etc/passwd names, labelled with version and commit; the binary for
// this machine, taken out of the pulled layers, says its version.
func TestImagesRoundTripThroughARegistry(t *testing.T) {
	root := repo.Root(t)
	_, version := releaseDir(t)
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	transport := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(transport.CloseIdleConnections)
	opts := []remote.Option{remote.WithContext(t.Context()), remote.WithTransport(transport)}

	for _, binary := range []string{release.Server, release.Agent} {
		t.Run(binary, func(t *testing.T) {
			local := taggedIndex(t, release.ImageDir(root, binary), version)
			ref, err := name.ParseReference(strings.TrimPrefix(reg.URL, "http://") + "/edgesync/" + binary + ":" + version)
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.WriteIndex(ref, local, opts...); err != nil {
				t.Fatalf("push %s: %v", ref, err)
			}
			pulled, err := remote.Index(ref, opts...)
			if err != nil {
				t.Fatalf("pull %s: %v", ref, err)
			}
			im, err := pulled.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			var platforms []string
			for _, desc := range im.Manifests {
				p := release.Platform{OS: desc.Platform.OS, Arch: desc.Platform.Architecture, Variant: desc.Platform.Variant}
				platforms = append(platforms, p.String())
				img, err := pulled.Image(desc.Digest)
				if err != nil {
					t.Fatal(err)
				}
				checkImage(t, img, binary, p, version)
			}
			want := []string{"linux/amd64", "linux/arm64"}
			if slices.Sort(platforms); !slices.Equal(platforms, want) {
				t.Errorf("%s holds images for %v, want %v", ref, platforms, want)
			}
		})
	}
}

// TestDeployNamesTheReleaseImage: deploy/server runs the image of the
// version the Makefile builds.
func TestDeployNamesTheReleaseImage(t *testing.T) {
	root := repo.Root(t)
	_, version := releaseDir(t)
	b, err := os.ReadFile(filepath.Join(root, "deploy", "server", "edgesync-server.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := "/" + release.Server + ":" + version
	for line := range strings.Lines(string(b)) {
		if image, ok := strings.CutPrefix(strings.TrimSpace(line), "image: "); ok && !strings.HasSuffix(image, want) {
			t.Errorf("deploy/server runs image %s, want the release image ...%s", image, want)
		}
	}
}

// taggedIndex opens the image index tagged version in the OCI layout dir.
func taggedIndex(t *testing.T, dir, version string) v1.ImageIndex {
	t.Helper()
	l, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		repo.Missing(t, "the image layout "+dir, "run `make image`, or `make test`")
	}
	m, err := l.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, desc := range m.Manifests {
		if desc.Annotations["org.opencontainers.image.ref.name"] == version {
			idx, err := l.ImageIndex(desc.Digest)
			if err != nil {
				t.Fatal(err)
			}
			return idx
		}
	}
	t.Fatalf("%s has no image tagged %s (the release version): run `make image`", dir, version)
	return nil
}

func checkImage(t *testing.T, img v1.Image, binary string, p release.Platform, version string) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	entrypoint := "/usr/local/bin/" + binary
	uid := strconv.Itoa(release.UID)
	if cf.OS != p.OS || cf.Architecture != p.Arch {
		t.Errorf("%s: config says %s/%s", p, cf.OS, cf.Architecture)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{entrypoint}) {
		t.Errorf("%s: entrypoint %q, want [%s]", p, cf.Config.Entrypoint, entrypoint)
	}
	if cf.Config.User != uid+":"+uid {
		t.Errorf("%s: runs as user %q, want %s:%s (non-root, numeric so that runAsNonRoot can check it)", p, cf.Config.User, uid, uid)
	}
	if got := cf.Config.Labels["org.opencontainers.image.version"]; got != version {
		t.Errorf("%s: version label %q, want %q", p, got, version)
	}
	if got := cf.Config.Labels["org.opencontainers.image.revision"]; got == "" {
		t.Errorf("%s: no revision (commit) label", p)
	}

	files := map[string][]byte{}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Name == strings.TrimPrefix(entrypoint, "/") && hdr.Mode&0o111 == 0 {
			t.Errorf("%s: %s is not executable (mode %o)", p, entrypoint, hdr.Mode)
		}
		if hdr.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files["/"+hdr.Name] = b
		}
	}
	if !strings.Contains(string(files["/etc/passwd"]), ":"+uid+":"+uid+":") {
		t.Errorf("%s: /etc/passwd has no user %s:\n%s", p, uid, files["/etc/passwd"])
	}
	bin, ok := files[entrypoint]
	if !ok {
		t.Fatalf("%s: the image has no %s", p, entrypoint)
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("%s: %s is not an ELF binary: %v", p, entrypoint, err)
	}
	if f.Machine != p.ELFMachine() {
		t.Errorf("%s: %s is for %v, want %v", p, entrypoint, f.Machine, p.ELFMachine())
	}
	if p.OS != runtime.GOOS || p.Arch != runtime.GOARCH {
		return
	}
	path := filepath.Join(t.TempDir(), binary)
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), path, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), binary+" "+version+" (commit ") {
		t.Errorf("%s from the image: --version printed %q (%v), want %s %s and its commit", p, out, err, binary, version)
	}
}
