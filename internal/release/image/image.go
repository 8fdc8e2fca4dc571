// Package image builds the edgesync container images from the static
// release binaries without a container engine, with go-containerregistry:
// for a binary, one image per platform in release.ImagePlatforms joined in
// a multi-arch index, written as an OCI image layout tagged with the
// version (internal/release/mkimage runs it for `make image`).
//
// There is no pulled base image. The base layer is made here and holds
// only what a static Go binary running as a non-root user needs: passwd
// and group entries for "nonroot" (uid and gid 65532, as in distroless), a
// home directory, /tmp, and /var/lib/edgesync for the agent's store. The
// second layer holds the binary at /usr/local/bin/NAME, the entrypoint.
// Every timestamp is Options.Created, so the same binaries give the same
// digests.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
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

// Options say what the images are stamped with.
type Options struct {
	Version, Commit string
	// Created is every timestamp in the images: their build date and the
	// modification time of every file.
	Created time.Time
}

// Index builds binary's image for every image platform, the binary for a
// platform read by binaryFor, and joins them in one index.
func Index(opts Options, binary string, binaryFor func(release.Platform) ([]byte, error)) (v1.ImageIndex, error) {
	base, err := baseLayer(opts.Created)
	if err != nil {
		return nil, err
	}
	return imageIndex(opts, base, binary, binaryFor)
}

// WriteLayout replaces dir with an OCI image layout holding idx, tagged
// version (the org.opencontainers.image.ref.name annotation skopeo and
// crane read).
func WriteLayout(dir string, idx v1.ImageIndex, version string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": version}))
}

// imageIndex builds binary's image for every image platform and joins them
// in one index.
func imageIndex(opts Options, base v1.Layer, binary string, binaryFor func(release.Platform) ([]byte, error)) (v1.ImageIndex, error) {
	labels := map[string]string{
		"org.opencontainers.image.title":    binary,
		"org.opencontainers.image.version":  opts.Version,
		"org.opencontainers.image.revision": opts.Commit,
		"org.opencontainers.image.source":   Source,
		"org.opencontainers.image.created":  opts.Created.Format(time.RFC3339),
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range release.ImagePlatforms {
		bin, err := binaryFor(p)
		if err != nil {
			return nil, err
		}
		entrypoint := "/usr/local/bin/" + binary
		top, err := layer(opts.Created, file{name: entrypoint, mode: 0o755, data: bin})
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
		cf.Created = v1.Time{Time: opts.Created}
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
