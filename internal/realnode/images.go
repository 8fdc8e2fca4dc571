package realnode

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BusyboxPath is where Debian's busybox-static puts its static binary.
const BusyboxPath = "/bin/busybox"

// Image names the harness imports. Nothing is ever pulled: a pod using
// them sets imagePullPolicy Never or IfNotPresent.
const (
	// SandboxImage is the pod sandbox ("pause") image: busybox sleeping.
	SandboxImage = "edgesync.local/pause:1"
	// WebImage is a small static HTTP server: busybox httpd serving /www
	// on WebPort, with busybox's applets (sh, cat, ls, wget...) on PATH
	// for kubectl exec.
	WebImage = "edgesync.local/web:1"
	// WebPort is the port WebImage's server listens on.
	WebPort = 8080
	// WebIndex is what WebImage serves at /.
	WebIndex = "hello from edgesync-web\n"
)

// imageTime is every timestamp in the images, so the same busybox gives
// the same digests.
var imageTime = time.Unix(0, 0).UTC()

// Images builds the harness's images from the host's static busybox:
// name → image.
func Images() (map[string]v1.Image, error) {
	layer, err := busyboxLayer()
	if err != nil {
		return nil, err
	}
	pause, err := busyboxImage(layer, v1.Config{
		Entrypoint: []string{"/bin/sleep", "2147483647"},
		Labels:     map[string]string{"io.cri-containerd.pinned": "pinned"},
	})
	if err != nil {
		return nil, err
	}
	web, err := busyboxImage(layer, v1.Config{
		Entrypoint:   []string{"/bin/httpd", "-f", "-vv", "-p", fmt.Sprint(WebPort), "-h", "/www"},
		ExposedPorts: map[string]struct{}{fmt.Sprintf("%d/tcp", WebPort): {}},
	})
	if err != nil {
		return nil, err
	}
	return map[string]v1.Image{SandboxImage: pause, WebImage: web}, nil
}

// busyboxImage is one layer with busybox and its applets, and cfg.
func busyboxImage(layer v1.Layer, cfg v1.Config) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: imageTime}
	cfg.Env = append(cfg.Env, "PATH=/bin")
	cfg.WorkingDir = "/"
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// busyboxLayer holds /bin/busybox, a symbolic link to it for each of its
// applets, /www/index.html and an empty /tmp.
func busyboxLayer() (v1.Layer, error) {
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("read the static busybox (Debian package busybox-static; make realnode-deps installs it): %w", err)
	}
	out, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", BusyboxPath, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) error {
		h.ModTime, h.Format = imageTime, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	entries := []struct {
		h    tar.Header
		data []byte
	}{
		{tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin))}, bin},
		{tar.Header{Typeflag: tar.TypeDir, Name: "www/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeReg, Name: "www/index.html", Mode: 0o644, Size: int64(len(WebIndex))}, []byte(WebIndex)},
		{tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}, nil},
		{tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}, nil},
	}
	for _, e := range entries {
		if err := add(&e.h, e.data); err != nil {
			return nil, err
		}
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}, nil); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}
