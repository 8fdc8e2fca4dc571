package volumes

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// File is one file of a volume's payload.
type File struct {
	Data []byte
	Mode fs.FileMode
}

// dataLink is the symlink that names the current version of a volume's
// files; readers go through it, so swapping it swaps every file at once.
const (
	dataLink    = "..data"
	dataLinkTmp = "..data_tmp"
)

// WriteAtomic makes dir hold exactly payload (relative file paths), in the
// layout kubelet's volumes use: the files live in a hidden directory named
// for the time it was written (..2026_01_02_03_04_05.123456789), the
// symlink ..data points at it, and each top-level entry of the payload is
// a symlink through ..data. An update writes a new hidden directory and
// renames a new symlink over ..data, so a reader sees the old files or
// the new ones, never a mix. It reports whether anything changed.
func WriteAtomic(dir string, payload map[string]File) (bool, error) {
	for p := range payload {
		if err := checkPath(p); err != nil {
			return false, err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	current, _ := os.Readlink(filepath.Join(dir, dataLink))
	if current != "" && same(filepath.Join(dir, current), payload) {
		return false, nil
	}

	version, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return false, err
	}
	if err := os.Chmod(version, 0o755); err != nil { // readable like the files in it
		return false, err
	}
	for p, f := range payload {
		full := filepath.Join(version, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return false, err
		}
		if err := os.WriteFile(full, f.Data, f.Mode.Perm()); err != nil {
			return false, err
		}
		if err := os.Chmod(full, f.Mode.Perm()); err != nil { // umask
			return false, err
		}
	}
	// Swap ..data in one rename.
	tmp := filepath.Join(dir, dataLinkTmp)
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(version), tmp); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, filepath.Join(dir, dataLink)); err != nil {
		return false, err
	}

	// User-visible entries: one symlink per top-level name, through ..data.
	top := map[string]bool{}
	for p := range payload {
		top[strings.SplitN(p, "/", 2)[0]] = true
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return true, err
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "..") {
			continue
		}
		if !top[name] {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return true, err
			}
		}
		delete(top, name)
	}
	for _, name := range slices.Sorted(maps.Keys(top)) {
		if err := os.Symlink(filepath.Join(dataLink, name), filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrExist) {
			return true, err
		}
	}
	// The old version is no longer reachable from ..data.
	if current != "" && current != filepath.Base(version) {
		if err := os.RemoveAll(filepath.Join(dir, current)); err != nil {
			return true, err
		}
	}
	return true, nil
}

// checkPath refuses paths that would leave the volume or hide in it.
func checkPath(p string) error {
	if p == "" || filepath.IsAbs(p) || p != filepath.Clean(p) || strings.HasPrefix(p, "..") {
		return fmt.Errorf("volume file path %q must be relative, clean and not start with '..'", p)
	}
	return nil
}

// same reports whether the directory version holds exactly payload.
func same(version string, payload map[string]File) bool {
	n := 0
	err := filepath.WalkDir(version, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(version, path)
		if err != nil {
			return err
		}
		f, ok := payload[filepath.ToSlash(rel)]
		if !ok {
			return fs.ErrNotExist
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !bytes.Equal(data, f.Data) || info.Mode().Perm() != f.Mode.Perm() {
			return fs.ErrInvalid
		}
		n++
		return nil
	})
	return err == nil && n == len(payload)
}
