package devicesync

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
)

// The spec fields of devices.kubeedge.io/v1beta1 Device and DeviceModel
// that edges need; everything else in the objects is ignored.

type deviceSpec struct {
	DeviceModelRef struct {
		Name string `json:"name"`
	} `json:"deviceModelRef"`
	NodeName   string           `json:"nodeName"`
	Properties []deviceProperty `json:"properties"`
	Protocol   *protocolConfig  `json:"protocol"`
	Methods    []deviceMethod   `json:"methods"`
}

type deviceProperty struct {
	Name          string          `json:"name"`
	Desired       *twinValue      `json:"desired"`
	Visitors      *protocolConfig `json:"visitors"`
	CollectCycle  int64           `json:"collectCycle"`
	ReportCycle   int64           `json:"reportCycle"`
	ReportToCloud bool            `json:"reportToCloud"`
	PushMethod    map[string]any  `json:"pushMethod"`
}

type protocolConfig struct {
	ProtocolName string         `json:"protocolName"`
	ConfigData   map[string]any `json:"configData"`
}

type twinValue struct {
	Value    string            `json:"value"`
	Metadata map[string]string `json:"metadata"`
}

type deviceMethod struct {
	Name          string   `json:"name"`
	Description   string   `json:"description"`
	PropertyNames []string `json:"propertyNames"`
}

type modelSpec struct {
	Protocol   string          `json:"protocol"`
	Properties []modelProperty `json:"properties"`
}

type modelProperty struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Type        string `json:"type"`
	AccessMode  string `json:"accessMode"`
	Minimum     string `json:"minimum"`
	Maximum     string `json:"maximum"`
	Unit        string `json:"unit"`
}

// specOf decodes obj's spec into spec.
func specOf(obj *unstructured.Unstructured, spec any) error {
	raw, ok := obj.Object["spec"].(map[string]any)
	if !ok {
		return nil
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, spec); err != nil {
		return fmt.Errorf("%s %s/%s: spec: %w", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
	}
	return nil
}

// nodeOf returns a device's spec.nodeName.
func nodeOf(obj *unstructured.Unstructured) string {
	name, _, _ := unstructured.NestedString(obj.Object, "spec", "nodeName")
	return name
}

// modelOf returns a device's spec.deviceModelRef.name.
func modelOf(obj *unstructured.Unstructured) string {
	name, _, _ := unstructured.NestedString(obj.Object, "spec", "deviceModelRef", "name")
	return name
}

// metaOf converts obj's metadata without managed fields, with
// resourceVersion replaced by version.
func metaOf(obj *unstructured.Unstructured, version string) (*metav1pb.ObjectMeta, error) {
	meta := metav1.ObjectMeta{
		Name:              obj.GetName(),
		Namespace:         obj.GetNamespace(),
		UID:               obj.GetUID(),
		ResourceVersion:   version,
		Generation:        obj.GetGeneration(),
		CreationTimestamp: obj.GetCreationTimestamp(),
		DeletionTimestamp: obj.GetDeletionTimestamp(),
		Labels:            obj.GetLabels(),
		Annotations:       obj.GetAnnotations(),
		OwnerReferences:   obj.GetOwnerReferences(),
		Finalizers:        obj.GetFinalizers(),
	}
	b, err := meta.Marshal()
	if err != nil {
		return nil, fmt.Errorf("%s/%s: metadata: %w", obj.GetNamespace(), obj.GetName(), err)
	}
	msg := &metav1pb.ObjectMeta{}
	if err := proto.Unmarshal(b, msg); err != nil {
		return nil, fmt.Errorf("%s/%s: metadata: %w", obj.GetNamespace(), obj.GetName(), err)
	}
	return msg, nil
}

func toStruct(m map[string]any, field string) (*structpb.Struct, error) {
	if m == nil {
		return nil, nil
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return s, nil
}

func toProtocol(p *protocolConfig, field string) (*edgesyncv1.ProtocolConfig, error) {
	if p == nil {
		return nil, nil
	}
	data, err := toStruct(p.ConfigData, field+".configData")
	if err != nil {
		return nil, err
	}
	return &edgesyncv1.ProtocolConfig{ProtocolName: p.ProtocolName, ConfigData: data}, nil
}

// toDevice converts a Device into its wire form, with version as its
// metadata.resourceVersion.
func toDevice(obj *unstructured.Unstructured, version string) (*edgesyncv1.Device, error) {
	var spec deviceSpec
	if err := specOf(obj, &spec); err != nil {
		return nil, err
	}
	meta, err := metaOf(obj, version)
	if err != nil {
		return nil, err
	}
	dev := &edgesyncv1.Device{Metadata: meta, ModelName: spec.DeviceModelRef.Name, NodeName: spec.NodeName}
	if dev.Protocol, err = toProtocol(spec.Protocol, "spec.protocol"); err != nil {
		return nil, fmt.Errorf("device %s/%s: %w", obj.GetNamespace(), obj.GetName(), err)
	}
	for i, p := range spec.Properties {
		prop := &edgesyncv1.DeviceProperty{
			Name:          p.Name,
			CollectCycle:  p.CollectCycle,
			ReportCycle:   p.ReportCycle,
			ReportToCloud: p.ReportToCloud,
		}
		if p.Desired != nil {
			prop.Desired = &edgesyncv1.TwinValue{Value: p.Desired.Value, Metadata: p.Desired.Metadata}
		}
		field := fmt.Sprintf("spec.properties[%d]", i)
		if prop.Visitors, err = toProtocol(p.Visitors, field+".visitors"); err != nil {
			return nil, fmt.Errorf("device %s/%s: %w", obj.GetNamespace(), obj.GetName(), err)
		}
		if prop.PushMethod, err = toStruct(p.PushMethod, field+".pushMethod"); err != nil {
			return nil, fmt.Errorf("device %s/%s: %w", obj.GetNamespace(), obj.GetName(), err)
		}
		dev.Properties = append(dev.Properties, prop)
	}
	for _, m := range spec.Methods {
		dev.Methods = append(dev.Methods, &edgesyncv1.DeviceMethod{Name: m.Name, Description: m.Description, PropertyNames: m.PropertyNames})
	}
	return dev, nil
}

// toModel converts a DeviceModel into its wire form.
func toModel(obj *unstructured.Unstructured) (*edgesyncv1.DeviceModel, error) {
	var spec modelSpec
	if err := specOf(obj, &spec); err != nil {
		return nil, err
	}
	meta, err := metaOf(obj, obj.GetResourceVersion())
	if err != nil {
		return nil, err
	}
	model := &edgesyncv1.DeviceModel{Metadata: meta, Protocol: spec.Protocol}
	for _, p := range spec.Properties {
		model.Properties = append(model.Properties, &edgesyncv1.ModelProperty{
			Name: p.Name, Description: p.Description, Type: p.Type, AccessMode: p.AccessMode,
			Minimum: p.Minimum, Maximum: p.Maximum, Unit: p.Unit,
		})
	}
	return model, nil
}
