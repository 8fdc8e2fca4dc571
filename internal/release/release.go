// Package release names the artifacts `make release` and `make image` write
// under .build/ and the CPUs each is built for: the edge agent for the
// x86-64, arm64 and 32-bit ARMv7 boards edge devices run on, the server for
// x86-64 and arm64. The Makefile builds them; the image tool
// (internal/release/mkimage) and the tests read them through these names.
package release

import (
	"debug/elf"
	"path/filepath"
)

// Binaries the release holds, each for its platforms.
const (
	Agent  = "edgesync-agent"
	Server = "edgesync-server"
)

// Platform is an OCI platform: linux/arm64, linux/arm/v7.
type Platform struct {
	OS, Arch, Variant string
}

// Platforms each binary is released for. The images hold the first two
// (linux/amd64 and linux/arm64) of each.
var (
	AgentPlatforms  = []Platform{{"linux", "amd64", ""}, {"linux", "arm64", ""}, {"linux", "arm", "v7"}}
	ServerPlatforms = []Platform{{"linux", "amd64", ""}, {"linux", "arm64", ""}}
	ImagePlatforms  = []Platform{{"linux", "amd64", ""}, {"linux", "arm64", ""}}
)

// Platforms returns the platforms binary is released for.
func Platforms(binary string) []Platform {
	if binary == Agent {
		return AgentPlatforms
	}
	return ServerPlatforms
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Arch
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// File is the file name of binary built for p: edgesync-agent-linux-armv7.
func (p Platform) File(binary string) string {
	return binary + "-" + p.OS + "-" + p.Arch + p.Variant
}

// ELFMachine is the ELF machine a binary for p declares.
func (p Platform) ELFMachine() elf.Machine {
	switch p.Arch {
	case "amd64":
		return elf.EM_X86_64
	case "arm64":
		return elf.EM_AARCH64
	case "arm":
		return elf.EM_ARM
	}
	return elf.EM_NONE
}

// Dir is where `make release` writes the binaries, SHA256SUMS and VERSION.
func Dir(root string) string { return filepath.Join(root, ".build", "release") }

// ImageDir is where `make image` writes the OCI image layout of binary.
func ImageDir(root, binary string) string { return filepath.Join(root, ".build", "images", binary) }

// Checksums is the file of SHA-256 sums in Dir, in sha256sum's format.
const Checksums = "SHA256SUMS"

// UID is the numeric user and group the images run as (distroless'
// "nonroot").
const UID = 65532
