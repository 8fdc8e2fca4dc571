package release_test

import (
	"bufio"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/edgesync/edgesync/internal/release"
	"github.com/edgesync/edgesync/internal/repo"
)

// releaseDir returns .build/release with the version it was built as, or
// skips (fails under `make test`) when `make release` has not run.
func releaseDir(t *testing.T) (dir, version string) {
	t.Helper()
	dir = release.Dir(repo.Root(t))
	v, err := os.ReadFile(filepath.Join(dir, "VERSION"))
	if err != nil {
		repo.Missing(t, "the release binaries ("+dir+")", "run `make release`, or `make test`")
	}
	return dir, strings.TrimSpace(string(v))
}

// TestReleaseBinariesAreForTheirCPUs reads every release binary as the
// device that runs it would: an ELF executable for its CPU (what `file`
// prints), statically linked, built for ARMv7 where it says armv7, and
// listed in SHA256SUMS with the right sum.
func TestReleaseBinariesAreForTheirCPUs(t *testing.T) {
	dir, _ := releaseDir(t)
	sums := readChecksums(t, filepath.Join(dir, release.Checksums))
	for _, binary := range []string{release.Agent, release.Server} {
		for _, p := range release.Platforms(binary) {
			file := p.File(binary)
			t.Run(file, func(t *testing.T) {
				path := filepath.Join(dir, file)
				f, err := elf.Open(path)
				if err != nil {
					t.Fatalf("%s is not an ELF binary: %v", file, err)
				}
				defer f.Close()
				if f.Machine != p.ELFMachine() || f.Type != elf.ET_EXEC {
					t.Errorf("%s is %v %v, want an executable for %v", file, f.Type, f.Machine, p.ELFMachine())
				}
				for _, prog := range f.Progs {
					if prog.Type == elf.PT_INTERP {
						t.Errorf("%s asks for a dynamic loader; edge devices may have no libc: it must be static", file)
					}
				}
				bi, err := buildinfo.ReadFile(path)
				if err != nil {
					t.Fatalf("%s: %v", file, err)
				}
				want := map[string]string{"GOOS": p.OS, "GOARCH": p.Arch, "CGO_ENABLED": "0", "-trimpath": "true"}
				if p.Arch == "arm" {
					want["GOARM"] = strings.TrimPrefix(p.Variant, "v")
				}
				got := map[string]string{}
				for _, s := range bi.Settings {
					got[s.Key] = s.Value
				}
				for k, v := range want {
					if got[k] != v {
						t.Errorf("%s was built with %s=%q, want %q", file, k, got[k], v)
					}
				}
				if sum := fileSum(t, path); sums[file] != sum {
					t.Errorf("SHA256SUMS lists %s as %q, its sum is %s", file, sums[file], sum)
				}
			})
		}
	}
}

// TestReleaseBinariesSayTheirVersion runs the binaries built for this
// machine: `--version` names the release version and a commit.
func TestReleaseBinariesSayTheirVersion(t *testing.T) {
	dir, version := releaseDir(t)
	for _, binary := range []string{release.Agent, release.Server} {
		p := release.Platform{OS: runtime.GOOS, Arch: runtime.GOARCH}
		out, err := exec.CommandContext(t.Context(), filepath.Join(dir, p.File(binary)), "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v\n%s", p.File(binary), err, out)
		}
		line := string(out)
		if !strings.HasPrefix(line, binary+" "+version+" (commit ") || strings.Contains(line, "commit unknown") {
			t.Errorf("%s --version printed %q, want %q and the commit it was built from", p.File(binary), line, binary+" "+version)
		}
	}
}

func readChecksums(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sums := map[string]string{}
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		sum, name, ok := strings.Cut(lines.Text(), "  ")
		if !ok {
			t.Fatalf("%s: line %q is not in sha256sum's format", path, lines.Text())
		}
		sums[name] = sum
	}
	if err := lines.Err(); err != nil {
		t.Fatal(err)
	}
	return sums
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
