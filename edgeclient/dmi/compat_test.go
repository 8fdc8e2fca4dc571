package dmi

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"

	dmiv1beta1 "github.com/edgesync/edgesync/gen/dmi/v1beta1"
	"github.com/edgesync/edgesync/internal/repo"
)

// kubeedgeDMI returns the directory of KubeEdge's own DMI definition
// (../shared/kubeedge-dmi, never copied into the repository).
func kubeedgeDMI(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(repo.Root(t), "..", "shared", "kubeedge-dmi")
	if _, err := os.Stat(filepath.Join(dir, "v1beta1", "api.proto")); err != nil {
		repo.Missing(t, "KubeEdge's DMI definition "+dir, "it is provided next to the repository as ../shared/kubeedge-dmi")
	}
	return dir
}

// TestWireCompatibleWithKubeEdge compiles KubeEdge's api.proto with the
// pinned buf and checks that edgesync's DMI definition has the same
// package, services, methods, messages, fields (names, numbers, types,
// labels, message types) and map entries: what a KubeEdge mapper puts on
// the wire, the agent reads, and the other way round.
func TestWireCompatibleWithKubeEdge(t *testing.T) {
	dir := kubeedgeDMI(t)
	out := filepath.Join(t.TempDir(), "kubeedge.binpb")
	cmd := exec.Command(repo.Binary(t, "buf"), "build", dir, "-o", out)
	cmd.Dir = t.TempDir()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("buf build %s: %v\n%s", dir, err, b)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	var theirs *descriptorpb.FileDescriptorProto
	for _, f := range set.GetFile() {
		if f.GetPackage() == "v1beta1" {
			theirs = f
		}
	}
	if theirs == nil {
		t.Fatalf("no package v1beta1 in %s", dir)
	}
	ours := protodesc.ToFileDescriptorProto(dmiv1beta1.File_v1beta1_dmi_proto)

	if ours.GetPackage() != theirs.GetPackage() {
		t.Errorf("package %q, KubeEdge's %q", ours.GetPackage(), theirs.GetPackage())
	}
	if a, b := ours.GetDependency(), theirs.GetDependency(); !slices.Equal(a, b) {
		t.Errorf("imports %v, KubeEdge's %v", a, b)
	}
	if a, b := services(ours), services(theirs); !slices.Equal(a, b) {
		t.Errorf("services differ:\nedgesync: %s\nKubeEdge: %s", strings.Join(a, "\n  "), strings.Join(b, "\n  "))
	}
	if a, b := messages(ours), messages(theirs); !slices.Equal(a, b) {
		for _, m := range a {
			if !slices.Contains(b, m) {
				t.Errorf("edgesync has %s; KubeEdge does not", m)
			}
		}
		for _, m := range b {
			if !slices.Contains(a, m) {
				t.Errorf("KubeEdge has %s; edgesync does not", m)
			}
		}
	}
	if t.Failed() {
		return
	}
	if n := len(messages(ours)); n < 60 {
		t.Fatalf("compared only %d message descriptions; the comparison is broken", n)
	}
}

// services describes every method: service, name, input, output and
// streaming.
func services(f *descriptorpb.FileDescriptorProto) []string {
	var out []string
	for _, s := range f.GetService() {
		for _, m := range s.GetMethod() {
			out = append(out, fmt.Sprintf("/%s.%s/%s(%s) returns (%s) client_streaming=%v server_streaming=%v",
				f.GetPackage(), s.GetName(), m.GetName(), m.GetInputType(), m.GetOutputType(), m.GetClientStreaming(), m.GetServerStreaming()))
		}
	}
	slices.Sort(out)
	return out
}

// messages describes every message (nested ones, such as map entries,
// included) and each of its fields, sorted.
func messages(f *descriptorpb.FileDescriptorProto) []string {
	var out []string
	var walk func(prefix string, ms []*descriptorpb.DescriptorProto)
	walk = func(prefix string, ms []*descriptorpb.DescriptorProto) {
		for _, m := range ms {
			name := prefix + "." + m.GetName()
			out = append(out, fmt.Sprintf("message %s map_entry=%v", name, m.GetOptions().GetMapEntry()))
			for _, fd := range m.GetField() {
				out = append(out, fmt.Sprintf("field %s.%s = %d %s %s %s json=%s oneof=%v", name, fd.GetName(), fd.GetNumber(),
					fd.GetLabel(), fd.GetType(), fd.GetTypeName(), fd.GetJsonName(), fd.OneofIndex != nil))
			}
			walk(name, m.GetNestedType())
			for _, e := range m.GetEnumType() {
				out = append(out, "enum "+name+"."+e.GetName())
			}
		}
	}
	walk("."+f.GetPackage(), f.GetMessageType())
	for _, e := range f.GetEnumType() {
		out = append(out, "enum "+e.GetName())
	}
	slices.Sort(out)
	return out
}
