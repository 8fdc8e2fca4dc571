// Command mkimage builds the edgesync container images (package
// internal/release/image) from the static release binaries in
// .build/release (`make release`) without a container engine: for each of
// edgesync-server and edgesync-agent a multi-arch index for linux/amd64 and
// linux/arm64, written as an OCI image layout under .build/images/NAME,
// tagged with the version. `make image` runs it:
//
//	go run ./internal/release/mkimage --version v0.1.0 --commit $(git rev-parse HEAD)
//
// Every timestamp is the epoch, or SOURCE_DATE_EPOCH when set.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/edgesync/edgesync/internal/release"
	"github.com/edgesync/edgesync/internal/release/image"
)

func main() {
	var root string
	opts := image.Options{Created: time.Unix(0, 0).UTC()}
	flag.StringVar(&root, "root", ".", "repository root: binaries are read from .build/release, images written to .build/images")
	flag.StringVar(&opts.Version, "version", "", "release version, the image tag (required)")
	flag.StringVar(&opts.Commit, "commit", "", "commit the binaries were built from (required)")
	flag.Parse()
	if err := run(root, opts); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(root string, opts image.Options) error {
	if opts.Version == "" || opts.Commit == "" {
		return errors.New("--version and --commit are required")
	}
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		sec, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q is not a number of seconds", epoch)
		}
		opts.Created = time.Unix(sec, 0).UTC()
	}
	for _, binary := range []string{release.Server, release.Agent} {
		idx, err := image.Index(opts, binary, func(p release.Platform) ([]byte, error) {
			b, err := os.ReadFile(filepath.Join(release.Dir(root), p.File(binary)))
			if err != nil {
				return nil, fmt.Errorf("read the release binary (run `make release`): %w", err)
			}
			return b, nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", binary, err)
		}
		dir := release.ImageDir(root, binary)
		if err := image.WriteLayout(dir, idx, opts.Version); err != nil {
			return fmt.Errorf("%s: %w", binary, err)
		}
		digest, err := idx.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("  %s:%s %s\n", dir, opts.Version, digest)
	}
	return nil
}
