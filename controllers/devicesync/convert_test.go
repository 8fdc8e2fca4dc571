package devicesync

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestToDeviceCarriesWhatTheEdgeNeeds(t *testing.T) {
	dev := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "devices.kubeedge.io/v1beta1",
		"kind":       "Device",
		"metadata": map[string]any{
			"name": "d", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
			"labels":        map[string]any{"room": "1"},
			"managedFields": []any{map[string]any{"manager": "kubectl"}},
		},
		"spec": map[string]any{
			"deviceModelRef": map[string]any{"name": "m"},
			"nodeName":       "edge-1",
			"protocol":       map[string]any{"protocolName": "modbus", "configData": map[string]any{"port": int64(502), "nested": map[string]any{"list": []any{"a", int64(1), true}}}},
			"properties": []any{map[string]any{
				"name":          "temp",
				"desired":       map[string]any{"value": "20", "metadata": map[string]any{"type": "int"}},
				"reportCycle":   int64(1000),
				"reportToCloud": true,
				"pushMethod":    map[string]any{"mqtt": map[string]any{"topic": "t", "qos": int64(1)}},
			}},
			"stateReport": map[string]any{"reportCycle": int64(5)}, // not needed by edges
		},
	}}
	got, err := toDevice(dev, "7/3")
	if err != nil {
		t.Fatal(err)
	}
	if got.GetMetadata().GetResourceVersion() != "7/3" || got.GetMetadata().GetUid() != "u-1" || got.GetMetadata().GetLabels()["room"] != "1" {
		t.Errorf("metadata %v, want uid u-1, labels and the combined version 7/3", got.GetMetadata())
	}
	if len(got.GetMetadata().GetManagedFields()) != 0 {
		t.Errorf("managed fields sent to the edge")
	}
	if got.GetModelName() != "m" || got.GetNodeName() != "edge-1" {
		t.Errorf("model %q node %q", got.GetModelName(), got.GetNodeName())
	}
	cfg := got.GetProtocol().GetConfigData().GetFields()
	if cfg["port"].GetNumberValue() != 502 || len(cfg["nested"].GetStructValue().GetFields()["list"].GetListValue().GetValues()) != 3 {
		t.Errorf("protocol config data %v", got.GetProtocol().GetConfigData())
	}
	p := got.GetProperties()[0]
	if p.GetDesired().GetValue() != "20" || p.GetDesired().GetMetadata()["type"] != "int" || p.GetReportCycle() != 1000 || !p.GetReportToCloud() {
		t.Errorf("property %v", p)
	}
	if p.GetPushMethod().GetFields()["mqtt"].GetStructValue().GetFields()["topic"].GetStringValue() != "t" {
		t.Errorf("push method %v", p.GetPushMethod())
	}
}

func TestToDeviceWithoutSpec(t *testing.T) {
	dev := &unstructured.Unstructured{Object: map[string]any{"metadata": map[string]any{"name": "d", "namespace": "ns"}}}
	got, err := toDevice(dev, "1")
	if err != nil || got.GetMetadata().GetName() != "d" || len(got.GetProperties()) != 0 {
		t.Fatalf("toDevice = %v, %v", got, err)
	}
}

func TestToDeviceRejectsMalformedSpec(t *testing.T) {
	dev := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"name": "d", "namespace": "ns"},
		"spec":     map[string]any{"properties": "not a list"},
	}}
	if _, err := toDevice(dev, "1"); err == nil {
		t.Fatal("toDevice accepted spec.properties that is not a list")
	}
}
