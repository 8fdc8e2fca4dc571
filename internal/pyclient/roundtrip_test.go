package pyclient_test

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	"github.com/edgesync/edgesync/internal/pyclient"
)

// TestPythonReadsAndWritesPodEvent sends a PodEvent made from a real
// Kubernetes Go Pod to the generated Python client, which reads
// pod.spec.containers[0].image through typed fields and answers with a
// PodEvent of its own that Go decodes back into a Kubernetes Pod.
func TestPythonReadsAndWritesPodEvent(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "u-1", ResourceVersion: "42"},
		Spec: corev1.PodSpec{
			NodeName:   "edge-1",
			Containers: []corev1.Container{{Name: "app", Image: "registry.example/web:1.0"}},
		},
	}
	// The Kubernetes Go types marshal to the same bytes protoc-gen-go reads.
	raw, err := pod.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	pbPod := &corev1pb.Pod{}
	if err := proto.Unmarshal(raw, pbPod); err != nil {
		t.Fatalf("k8s bytes into protoc-gen-go Pod: %v", err)
	}
	sent, err := proto.Marshal(&edgesyncv1.SyncResponse{
		Sequence: 7,
		Message: &edgesyncv1.SyncResponse_PodEvent{PodEvent: &edgesyncv1.PodEvent{
			Type: edgesyncv1.EventType_EVENT_TYPE_APPLY,
			Pod:  pbPod,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}

	cmd := pyclient.Command(t, "roundtrip.py")
	cmd.Stdin = strings.NewReader(hex.EncodeToString(sent))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, stderr.String())
	}
	if want := "image=registry.example/web:1.0 sequence=7"; !strings.Contains(stderr.String(), want) {
		t.Fatalf("python printed %q, want it to contain %q", stderr.String(), want)
	}

	replyBytes, err := hex.DecodeString(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("python output is not hex: %v", err)
	}
	reply := &edgesyncv1.SyncResponse{}
	if err := proto.Unmarshal(replyBytes, reply); err != nil {
		t.Fatalf("decode python's SyncResponse: %v", err)
	}
	podBytes, err := proto.Marshal(reply.GetPodEvent().GetPod())
	if err != nil {
		t.Fatal(err)
	}
	var back corev1.Pod
	if err := back.Unmarshal(podBytes); err != nil {
		t.Fatalf("python's pod into a Kubernetes Go Pod: %v", err)
	}
	if reply.GetSequence() != 8 || back.Name != "web-from-python" || back.Spec.NodeName != "edge-1" ||
		len(back.Spec.Containers) != 1 || back.Spec.Containers[0].Image != "registry.example/web:2.0" {
		t.Fatalf("python answered sequence %d pod %s/%s node %q containers %+v", reply.GetSequence(), back.Namespace, back.Name, back.Spec.NodeName, back.Spec.Containers)
	}
}
