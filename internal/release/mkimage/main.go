// Command mkimage builds the edgesync container images from the static
// release binaries (`make release`) without a container engine: for each
// of edgesync-server and edgesync-agent, one image per platform in
// release.ImagePlatforms, joined in a multi-arch index and written as an
// OCI image layout under .build/images/NAME, tagged with the version.
//
//	go run ./internal/release/mkimage --version v0.1.0 --commit $(git rev-parse HEAD)
//
// There is no pulled base image. The base layer is made here and holds
// only what a static Go binary running as a non-root user needs: passwd
// and group entries for "nonroot" (uid and gid 65532, as in distroless), a
// home directory, /tmp, and /var/lib/edgesync for the agent's store. The
// second layer holds the binary at /usr/local/bin/NAME, the entrypoint.
// Every timestamp is the epoch (or SOURCE_DATE_EPOCH), so the same binaries
// give the same digests.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/edgesync/edgesync/internal/release"
)

// Source is the repository the images' labels point at.
const Source = "https://github.com/edgesync/edgesync"

func main() {
	var opts options
	flag.StringVar(&opts.root, "root", ".", "repository root: binaries are read from .build/release, images written to .build/images")
	flag.StringVar(&opts.version, "version", "", "release version, the image tag (required)")
	flag.StringVar(&opts.commit, "commit", "", "commit the binaries were built from (required)")
	flag.Parse()
	if err := run(opts); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

type options struct {
	root, version, commit string
	created               time.Time
}

func run(opts options) error {
	if opts.version == "" || opts.commit == "" {
		return errors.New("--version and --commit are required")
	}
	opts.created = time.Unix(0, 0).UTC()
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		sec, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q is not a number of seconds", epoch)
		}
		opts.created = time.Unix(sec, 0).UTC()
	}
	base, err := baseLayer(opts.created)
	if err != nil {
		return err
	}
	for _, binary := range []string{release.Server, release.Agent} {
		idx, err := imageIndex(opts, base, binary)
		if err != nil {
			return fmt.Errorf("%s: %w", binary, err)
		}
		dir := release.ImageDir(opts.root, binary)
		if err := writeLayout(dir, idx, opts.version); err != nil {
			return fmt.Errorf("%s: %w", binary, err)
		}
		digest, err := idx.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("  %s:%s %s\n", dir, opts.version, digest)
	}
	return nil
}

// imageIndex builds binary's image for every image platform and joins them
// in one index.
func imageIndex(opts options, base v1.Layer, binary string) (v1.ImageIndex, error) {
	labels := map[string]string{
		"org.opencontainers.image.title":    binary,
		"org.opencontainers.image.version":  opts.version,
		"org.opencontainers.image.revision": opts.commit,
		"org.opencontainers.image.source":   Source,
		"org.opencontainers.image.created":  opts.created.Format(time.RFC3339),
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range release.ImagePlatforms {
		bin, err := os.ReadFile(filepath.Join(release.Dir(opts.root), p.File(binary)))
		if err != nil {
			return nil, fmt.Errorf("read the release binary (run `make release`): %w", err)
		}
		entrypoint := "/usr/local/bin/" + binary
		top, err := layer(opts.created, file{name: entrypoint, mode: 0o755, data: bin})
		if err != nil {
			return nil, err
		}
		img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
		img, err = mutate.AppendLayers(img, base, top)
		if err != nil {
			return nil, err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Arch, p.Variant
		cf.Created = v1.Time{Time: opts.created}
		cf.Config = v1.Config{
			Entrypoint: []string{entrypoint},
			User:       fmt.Sprintf("%d:%d", release.UID, release.UID),
			WorkingDir: "/home/nonroot",
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/nonroot"},
			Labels:     labels,
		}
		img, err = mutate.ConfigFile(img, cf)
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add: img,
			Descriptor: v1.Descriptor{
				MediaType: types.OCIManifestSchema1,
				Platform:  &v1.Platform{OS: p.OS, Architecture: p.Arch, Variant: p.Variant},
			},
		})
	}
	return idx, nil
}

// writeLayout replaces dir with an OCI image layout holding idx, tagged
// version (the org.opencontainers.image.ref.name annotation skopeo and
// crane read).
func writeLayout(dir string, idx v1.ImageIndex, version string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": version}))
}

// baseLayer is what every image holds besides its binary.
func baseLayer(created time.Time) (v1.Layer, error) {
	uid := release.UID
	return layer(created,
		file{name: "/etc/passwd", mode: 0o644, data: fmt.Appendf(nil,
			"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", uid, uid)},
		file{name: "/etc/group", mode: 0o644, data: fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", uid)},
		// Go's resolver reads it: files before DNS, as glibc does.
		file{name: "/etc/nsswitch.conf", mode: 0o644, data: []byte("hosts: files dns\n")},
		file{name: "/home/nonroot/", mode: 0o700, uid: uid},
		file{name: "/tmp/", mode: 0o1777},
		file{name: "/var/lib/edgesync/", mode: 0o700, uid: uid},
	)
}

// file is one entry of a layer; a name ending in / is a directory.
type file struct {
	name string
	mode int64
	uid  int
	data []byte
}

// layer makes a gzip-compressed layer of files, parent directories first.
func layer(created time.Time, files ...file) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		name := f.name[1:] // relative to the root, as in docker's layers
		for _, dir := range parents(name) {
			if !dirs[dir] {
				dirs[dir] = true
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: created, Format: tar.FormatPAX}); err != nil {
					return nil, err
				}
			}
		}
		hdr := &tar.Header{Name: name, Mode: f.mode, Uid: f.uid, Gid: f.uid, ModTime: created, Format: tar.FormatPAX}
		if name[len(name)-1] == '/' {
			dirs[name] = true
			hdr.Typeflag = tar.TypeDir
		} else {
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
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

// parents lists the directories above name, outermost first, each ending
// in /: "usr/local/bin/x" gives "usr/", "usr/local/", "usr/local/bin/".
func parents(name string) []string {
	var dirs []string
	for i := 0; i < len(name)-1; i++ {
		if name[i] == '/' {
			dirs = append(dirs, name[:i+1])
		}
	}
	return dirs
}
