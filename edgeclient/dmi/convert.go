package dmi

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/edgesync/edgesync/edgeclient"
	dmiv1beta1 "github.com/edgesync/edgesync/gen/dmi/v1beta1"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// protocolOf returns the protocol a device is driven over: its
// spec.protocol.protocolName, which picks the mapper.
func protocolOf(d *edgesyncv1.Device) string {
	return d.GetProtocol().GetProtocolName()
}

// toDevice converts a held device into the form mappers receive, as
// KubeEdge's edgecore sends it. Every property has desired, visitors and
// visitors.configData set (KubeEdge's mapper framework dereferences them
// without checking), and free-form configuration values are packed as
// edgecore packs them: strings as StringValue, numbers as FloatValue,
// booleans as BoolValue (nested objects and lists, which edgecore refuses,
// as Struct and ListValue).
func toDevice(d *edgesyncv1.Device) (*dmiv1beta1.Device, error) {
	meta := d.GetMetadata()
	where := func(field string) string {
		return fmt.Sprintf("device %s/%s: %s", meta.GetNamespace(), meta.GetName(), field)
	}
	protocol, err := customized(d.GetProtocol().GetConfigData(), where("spec.protocol.configData"))
	if err != nil {
		return nil, err
	}
	out := &dmiv1beta1.Device{
		Name: meta.GetName(), Namespace: meta.GetNamespace(),
		Spec: &dmiv1beta1.DeviceSpec{
			DeviceModelReference: d.GetModelName(),
			Protocol:             &dmiv1beta1.ProtocolConfig{ProtocolName: protocolOf(d), ConfigData: protocol},
		},
	}
	for i, p := range d.GetProperties() {
		field := fmt.Sprintf("spec.properties[%d]", i)
		prop := &dmiv1beta1.DeviceProperty{
			Name:          p.GetName(),
			Desired:       &dmiv1beta1.TwinProperty{Value: p.GetDesired().GetValue(), Metadata: p.GetDesired().GetMetadata()},
			ReportCycle:   p.GetReportCycle(),
			CollectCycle:  p.GetCollectCycle(),
			ReportToCloud: p.GetReportToCloud(),
		}
		if prop.Desired.Metadata == nil {
			prop.Desired.Metadata = map[string]string{}
		}
		visitors, err := customized(p.GetVisitors().GetConfigData(), where(field+".visitors.configData"))
		if err != nil {
			return nil, err
		}
		prop.Visitors = &dmiv1beta1.VisitorConfig{ProtocolName: p.GetVisitors().GetProtocolName(), ConfigData: visitors}
		if prop.Visitors.ProtocolName == "" {
			prop.Visitors.ProtocolName = protocolOf(d)
		}
		if prop.PushMethod, err = pushMethod(p.GetPushMethod(), where(field+".pushMethod")); err != nil {
			return nil, err
		}
		out.Spec.Properties = append(out.Spec.Properties, prop)
	}
	for _, m := range d.GetMethods() {
		out.Spec.Methods = append(out.Spec.Methods, &dmiv1beta1.DeviceMethod{
			Name: m.GetName(), Description: m.GetDescription(), PropertyNames: m.GetPropertyNames(),
		})
	}
	return out, nil
}

// toModel converts a held device model into the form mappers receive.
func toModel(m *edgesyncv1.DeviceModel) *dmiv1beta1.DeviceModel {
	out := &dmiv1beta1.DeviceModel{
		Name: m.GetMetadata().GetName(), Namespace: m.GetMetadata().GetNamespace(),
		Spec: &dmiv1beta1.DeviceModelSpec{},
	}
	for _, p := range m.GetProperties() {
		out.Spec.Properties = append(out.Spec.Properties, &dmiv1beta1.ModelProperty{
			Name: p.GetName(), Description: p.GetDescription(), Type: p.GetType(), AccessMode: p.GetAccessMode(),
			Minimum: p.GetMinimum(), Maximum: p.GetMaximum(), Unit: p.GetUnit(),
		})
	}
	return out
}

// customized packs free-form configuration into a CustomizedValue; it is
// never nil, so that mappers may read it without checking.
func customized(s *structpb.Struct, field string) (*dmiv1beta1.CustomizedValue, error) {
	out := &dmiv1beta1.CustomizedValue{Data: map[string]*anypb.Any{}}
	for k, v := range s.GetFields() {
		packed, err := pack(v)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", field, k, err)
		}
		if packed != nil {
			out.Data[k] = packed
		}
	}
	return out, nil
}

// pack packs one configuration value as KubeEdge's edgecore does; a null
// value is left out (nil).
func pack(v *structpb.Value) (*anypb.Any, error) {
	var msg proto.Message
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		msg = wrapperspb.String(k.StringValue)
	case *structpb.Value_NumberValue:
		msg = wrapperspb.Float(float32(k.NumberValue))
	case *structpb.Value_BoolValue:
		msg = wrapperspb.Bool(k.BoolValue)
	case *structpb.Value_StructValue:
		msg = k.StructValue
	case *structpb.Value_ListValue:
		msg = k.ListValue
	default:
		return nil, nil
	}
	return anypb.New(msg)
}

// pushMethod converts spec.properties[].pushMethod as edgecore does: its
// JSON is decoded into the DMI message with field names matched without
// regard to case (hostName fills hostname, TDEngine fills tdengine), and
// anomalyDetection's free-form data is packed like configuration.
func pushMethod(s *structpb.Struct, field string) (*dmiv1beta1.PushMethod, error) {
	if s == nil {
		return nil, nil
	}
	rest := proto.Clone(s).(*structpb.Struct)
	anomaly := rest.GetFields()["anomalyDetection"]
	delete(rest.Fields, "anomalyDetection")
	raw, err := protojson.Marshal(rest)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	out := &dmiv1beta1.PushMethod{}
	if err := json.Unmarshal(raw, out); err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	if anomaly != nil {
		data, err := customized(anomaly.GetStructValue(), field+".anomalyDetection")
		if err != nil {
			return nil, err
		}
		out.AnomalyDetection = &dmiv1beta1.AnomalyDetection{Data: data.GetData()}
	}
	return out, nil
}

// modelOf returns the model of a held device, or nil.
func modelOf(d *edgeclient.Device) *edgesyncv1.DeviceModel {
	if d == nil {
		return nil
	}
	return d.Model
}
