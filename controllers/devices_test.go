package controllers_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/devicesync"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

// installCRDs creates or replaces the CRDs in the YAML files of dir and
// waits until they are established.
func installCRDs(ctx context.Context, t *testing.T, dyn dynamic.Interface, dir string) {
	t.Helper()
	testcluster.InstallCRDs(ctx, t, dyn, dir)
}

func deviceKey(ns, name string) feed.Key {
	return feed.Key{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: ns, Name: name}
}

func object(t *testing.T, yamlText string) *unstructured.Unstructured {
	t.Helper()
	obj := &unstructured.Unstructured{}
	if err := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(yamlText), 4096).Decode(&obj.Object); err != nil {
		t.Fatal(err)
	}
	return obj
}

const modelYAML = `
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata:
  name: thermometer
spec:
  protocol: modbus
  properties:
    - name: temperature
      description: room temperature
      type: INT
      accessMode: ReadWrite
      minimum: "0"
      maximum: "100"
`

const deviceYAML = `
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata:
  name: thermo-1
spec:
  deviceModelRef:
    name: thermometer
  nodeName: NODE
  protocol:
    protocolName: modbus
    configData:
      slaveID: 1
  properties:
    - name: temperature
      desired:
        value: "20"
      visitors:
        protocolName: modbus
        configData:
          register: HoldingRegister
          offset: 2
      collectCycle: 500
      reportCycle: 1000
      reportToCloud: true
  methods:
    - name: set-temperature
      propertyNames: [temperature]
`

// TestDevices runs the device flow with edgesync's CRDs and with
// KubeEdge's own, which have the same names: each subtest installs its set
// (replacing the other), and edgesync's are restored at the end.
func TestDevices(t *testing.T) {
	client := testcluster.Client(t)
	dyn, err := dynamic.NewForConfig(testcluster.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	root := repo.Root(t)
	ours := filepath.Join(root, "deploy", "crds")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		installCRDs(ctx, t, dyn, ours)
	})
	for _, set := range []struct{ name, dir string }{
		{"edgesync CRDs", ours},
		{"KubeEdge CRDs", filepath.Join(root, "..", "shared", "kubeedge-crds")},
	} {
		t.Run(set.name, func(t *testing.T) {
			if _, err := os.Stat(set.dir); err != nil {
				repo.Missing(t, "CRDs at "+set.dir, "the KubeEdge CRDs come from ../shared/kubeedge-crds beside the repository")
			}
			installCRDs(t.Context(), t, dyn, set.dir)
			testDeviceFlow(t, dyn, edgeNode(t, client, "edge-1"), edgeNode(t, client, "edge-2"))
		})
	}
}

func testDeviceFlow(t *testing.T, dyn dynamic.Interface, edge1, edge2 string) {
	ns := testcluster.Namespace(t, testcluster.Client(t))
	rec := newRecorder()
	ctrls := start(t, controllers.Config{}, rec)
	devices := dyn.Resource(devicesync.Devices).Namespace(ns)
	models := dyn.Resource(devicesync.DeviceModels).Namespace(ns)

	if _, err := models.Create(t.Context(), object(t, modelYAML), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create model: %v", err)
	}
	dev, err := devices.Create(t.Context(), object(t, strings.Replace(deviceYAML, "NODE", edge1, 1)), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create device: %v", err)
	}
	key := deviceKey(ns, "thermo-1")

	event := rec.waitApplied(t, edge1, key, func(m *edgesyncv1.SyncResponse) bool {
		return m.GetDeviceEvent().GetModel() != nil
	}).GetDeviceEvent()
	d := event.GetDevice()
	if d.GetModelName() != "thermometer" || d.GetNodeName() != edge1 || len(d.GetProperties()) != 1 {
		t.Fatalf("edge-1 got device %v", d)
	}
	p := d.GetProperties()[0]
	if p.GetDesired().GetValue() != "20" || p.GetReportCycle() != 1000 || p.GetCollectCycle() != 500 || !p.GetReportToCloud() ||
		p.GetVisitors().GetConfigData().GetFields()["offset"].GetNumberValue() != 2 || d.GetProtocol().GetProtocolName() != "modbus" {
		t.Errorf("device property sent as %v, protocol %v", p, d.GetProtocol())
	}
	if len(d.GetMethods()) != 1 || d.GetMethods()[0].GetPropertyNames()[0] != "temperature" {
		t.Errorf("device methods sent as %v", d.GetMethods())
	}
	if m := event.GetModel(); m.GetProtocol() != "modbus" || len(m.GetProperties()) != 1 || m.GetProperties()[0].GetType() != "INT" || m.GetProperties()[0].GetAccessMode() != "ReadWrite" {
		t.Errorf("model sent as %v", m)
	}
	if objs := withoutNodes(rec.sent(edge2)); len(objs) != 0 {
		t.Errorf("edge-2 was sent %v, want nothing", keys(objs))
	}
	if desired, err := ctrls.Desired(edge1); err != nil || len(withoutNodes(desired)) != 1 || withoutNodes(desired)[0].Key != key {
		t.Errorf("Desired(edge-1) = %v, %v; want the device", keys(desired), err)
	}

	// A new desired value flows down.
	if err := unstructured.SetNestedSlice(dev.Object, []any{map[string]any{
		"name": "temperature", "desired": map[string]any{"value": "25"},
	}}, "spec", "properties"); err != nil {
		t.Fatal(err)
	}
	if dev, err = devices.Update(t.Context(), dev, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge1, key, func(m *edgesyncv1.SyncResponse) bool {
		props := m.GetDeviceEvent().GetDevice().GetProperties()
		return len(props) == 1 && props[0].GetDesired().GetValue() == "25"
	})

	// A model change resends the device with the new model.
	model, err := models.Get(t.Context(), "thermometer", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	props, _, _ := unstructured.NestedSlice(model.Object, "spec", "properties")
	props[0].(map[string]any)["unit"] = "Celsius"
	_ = unstructured.SetNestedSlice(model.Object, props, "spec", "properties")
	if _, err := models.Update(t.Context(), model, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge1, key, func(m *edgesyncv1.SyncResponse) bool {
		props := m.GetDeviceEvent().GetModel().GetProperties()
		return len(props) == 1 && props[0].GetUnit() == "Celsius"
	})

	// Reports: only the device's node may report, and what it reports
	// lands in the DeviceStatus of the same name.
	online := time.Date(2026, 11, 22, 17, 0, 0, 0, time.UTC)
	statusReport := func(id uint64, value string) *edgesyncv1.SyncRequest {
		return &edgesyncv1.SyncRequest{RequestId: id, Message: &edgesyncv1.SyncRequest_DeviceStatus{DeviceStatus: &edgesyncv1.DeviceStatus{
			Namespace: ns, Name: "thermo-1", State: "online", LastOnlineTime: timestamppb.New(online),
			Twins: []*edgesyncv1.Twin{{
				PropertyName:    "temperature",
				Reported:        &edgesyncv1.TwinValue{Value: value, Metadata: map[string]string{"type": "int"}},
				ObservedDesired: &edgesyncv1.TwinValue{Value: "25"},
			}},
		}}}
	}
	results := make(answers, 1)
	ctrls.HandleReport(edge2, statusReport(1, "99"), results.answer)
	if r := results.wait(t); codes.Code(r.GetCode()) != codes.PermissionDenied {
		t.Fatalf("report from another node answered %v, want PermissionDenied", r)
	}
	ctrls.HandleReport(edge1, statusReport(2, "21"), results.answer)
	if r := results.wait(t); r.GetCode() != 0 || r.GetRequestId() != 2 {
		t.Fatalf("report answered %v, want OK for request 2", r)
	}
	st, err := dyn.Resource(devicesync.DeviceStatuses).Namespace(ns).Get(t.Context(), "thermo-1", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("DeviceStatus after report: %v", err)
	}
	twins, _, _ := unstructured.NestedSlice(st.Object, "status", "twins")
	state, _, _ := unstructured.NestedString(st.Object, "status", "state")
	last, _, _ := unstructured.NestedString(st.Object, "status", "lastOnlineTime")
	if len(twins) != 1 || state != "online" || last != "2026-11-22T17:00:00Z" {
		t.Fatalf("DeviceStatus status = %v", st.Object["status"])
	}
	reported, _, _ := unstructured.NestedString(twins[0].(map[string]any), "reported", "value")
	observed, _, _ := unstructured.NestedString(twins[0].(map[string]any), "observedDesired", "value")
	if reported != "21" || observed != "25" {
		t.Errorf("twin = %v, want reported 21 and observedDesired 25", twins[0])
	}
	if owners := st.GetOwnerReferences(); len(owners) != 1 || owners[0].UID != dev.GetUID() {
		t.Errorf("DeviceStatus owners %v, want the device", owners)
	}
	// Moving the device: deleted on edge-1, added on edge-2.
	if err := unstructured.SetNestedField(dev.Object, edge2, "spec", "nodeName"); err != nil {
		t.Fatal(err)
	}
	if _, err := devices.Update(t.Context(), dev, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitDeleted(t, edge1, key)
	rec.waitApplied(t, edge2, key, nil)

	if err := devices.Delete(t.Context(), "thermo-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitDeleted(t, edge2, key)
}
