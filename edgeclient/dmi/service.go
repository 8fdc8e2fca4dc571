package dmi

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/edgesync/edgesync/edgeclient"
	dmiv1beta1 "github.com/edgesync/edgesync/gen/dmi/v1beta1"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Limits on what a mapper reports.
const (
	maxValueBytes = 16 << 10
	maxStateBytes = 256
)

// service is DeviceManagerService. Its errors are gRPC statuses a mapper's
// author can act on.
type service struct {
	dmiv1beta1.UnimplementedDeviceManagerServiceServer
	m *Manager
}

func (s *service) MapperRegister(_ context.Context, req *dmiv1beta1.MapperRegisterRequest) (*dmiv1beta1.MapperRegisterResponse, error) {
	m := s.m
	in := req.GetMapper()
	if in == nil {
		return nil, status.Error(codes.InvalidArgument, "mapper is required: name, protocol and the address of the mapper's DeviceMapperService socket")
	}
	if in.GetProtocol() == "" {
		return nil, status.Errorf(codes.InvalidArgument,
			"mapper %q has no protocol: set mapper.protocol to the spec.protocol.protocolName of the devices it drives", in.GetName())
	}
	socket := strings.TrimPrefix(string(in.GetAddress()), "unix://")
	if !filepath.IsAbs(socket) {
		return nil, status.Errorf(codes.InvalidArgument,
			"mapper %q: address %q is not the absolute path of a UNIX socket: set mapper.address to the socket the mapper serves DeviceMapperService on, for example /etc/kubeedge/%s.sock",
			in.GetName(), in.GetAddress(), in.GetProtocol())
	}
	info := mapperInfo{name: in.GetName(), version: in.GetVersion(), protocol: in.GetProtocol(), socket: filepath.Clean(socket)}
	if info.name == "" {
		info.name = info.protocol
	}
	mp, err := newMapper(info, m.cfg.CallTimeout, m.log)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "mapper %q: %v", info.name, err)
	}
	devices, models, err := m.register(mp, req.GetWithData())
	if err != nil {
		mp.close()
		return nil, status.Errorf(codes.Unavailable, "node %s cannot list its devices: %v", m.cfg.NodeName, err)
	}
	m.log.Info("mapper registered", zap.String("mapper", info.name), zap.String("version", info.version),
		zap.String("protocol", info.protocol), zap.String("socket", info.socket), zap.Int("devices", len(devices)))
	if !req.GetWithData() {
		return &dmiv1beta1.MapperRegisterResponse{}, nil
	}
	return &dmiv1beta1.MapperRegisterResponse{DeviceList: devices, ModelList: models}, nil
}

func (s *service) ReportDeviceStatus(_ context.Context, req *dmiv1beta1.ReportDeviceStatusRequest) (*dmiv1beta1.ReportDeviceStatusResponse, error) {
	m := s.m
	key, held, err := m.resolve(req.GetDeviceNamespace(), req.GetDeviceName())
	if err != nil {
		return nil, err
	}
	twins := req.GetReportedDevice().GetTwins()
	if len(twins) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "device %s/%s: reportedDevice.twins is empty: report at least one property's value", key.Namespace, key.Name)
	}
	converted := make([]*edgesyncv1.Twin, 0, len(twins))
	for i, tw := range twins {
		t, err := checkTwin(key, held, i, tw)
		if err != nil {
			return nil, err
		}
		converted = append(converted, t)
	}
	m.merge(key, held, func(st *deviceStatus) {
		for _, t := range converted {
			st.twins[t.GetPropertyName()] = t
		}
	})
	return &dmiv1beta1.ReportDeviceStatusResponse{}, nil
}

func (s *service) ReportDeviceStates(_ context.Context, req *dmiv1beta1.ReportDeviceStatesRequest) (*dmiv1beta1.ReportDeviceStatesResponse, error) {
	m := s.m
	key, held, err := m.resolve(req.GetDeviceNamespace(), req.GetDeviceName())
	if err != nil {
		return nil, err
	}
	state := req.GetState()
	switch {
	case state == "":
		return nil, status.Errorf(codes.InvalidArgument, "device %s/%s: state is empty: report for example \"online\" or \"offline\"", key.Namespace, key.Name)
	case len(state) > maxStateBytes:
		return nil, status.Errorf(codes.InvalidArgument, "device %s/%s: state is %d bytes, at most %d are kept", key.Namespace, key.Name, len(state), maxStateBytes)
	}
	m.merge(key, held, func(st *deviceStatus) {
		st.state = state
		if s := strings.ToLower(state); s == "online" || s == "ok" {
			st.lastOnline = m.cfg.now()
		}
	})
	return &dmiv1beta1.ReportDeviceStatesResponse{}, nil
}

// resolve finds the held device a report is about. A mapper may leave the
// namespace out when the node holds one device of that name.
func (m *Manager) resolve(namespace, name string) (edgeclient.Key, *edgeclient.Device, error) {
	key := edgeclient.Key{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: namespace, Name: name}
	if name == "" {
		return key, nil, status.Error(codes.InvalidArgument, "deviceName is required: the name of a device the mapper received")
	}
	if namespace == "" {
		all, err := m.node.Devices()
		if err != nil {
			return key, nil, status.Errorf(codes.Unavailable, "node %s cannot read its devices: %v", m.cfg.NodeName, err)
		}
		var found []*edgeclient.Device
		for _, d := range all {
			if d.Device.GetMetadata().GetName() == name {
				found = append(found, d)
			}
		}
		switch len(found) {
		case 0:
			return key, nil, notHeld(m.cfg.NodeName, "", name)
		case 1:
			return keyOf(found[0].Device), found[0], nil
		}
		var namespaces []string
		for _, d := range found {
			namespaces = append(namespaces, d.Device.GetMetadata().GetNamespace())
		}
		return key, nil, status.Errorf(codes.InvalidArgument, "deviceNamespace is required: node %s holds devices named %q in namespaces %s",
			m.cfg.NodeName, name, strings.Join(namespaces, ", "))
	}
	held, err := m.node.Device(namespace, name)
	if err != nil {
		return key, nil, status.Errorf(codes.Unavailable, "node %s cannot read its devices: %v", m.cfg.NodeName, err)
	}
	if held == nil {
		return key, nil, notHeld(m.cfg.NodeName, namespace, name)
	}
	return key, held, nil
}

func notHeld(node, namespace, name string) error {
	device := name
	if namespace != "" {
		device = namespace + "/" + name
	}
	return status.Errorf(codes.NotFound,
		"device %s is not bound to node %s: it does not exist, or its spec.nodeName is another node; a mapper may report only the devices this node gave it",
		device, node)
}

// checkTwin checks one reported twin against the device and its model and
// converts it.
func checkTwin(key edgeclient.Key, held *edgeclient.Device, i int, tw *dmiv1beta1.Twin) (*edgesyncv1.Twin, error) {
	dev := key.Namespace + "/" + key.Name
	name := tw.GetPropertyName()
	if name == "" {
		return nil, status.Errorf(codes.InvalidArgument, "device %s: reportedDevice.twins[%d].propertyName is empty", dev, i)
	}
	var props []string
	known := false
	for _, p := range held.Device.GetProperties() {
		props = append(props, p.GetName())
		known = known || p.GetName() == name
	}
	var typ string
	for _, p := range modelOf(held).GetProperties() {
		if p.GetName() == name {
			known, typ = true, p.GetType()
		}
	}
	if !known {
		return nil, status.Errorf(codes.InvalidArgument, "device %s has no property %q (its properties: %s)", dev, name, strings.Join(props, ", "))
	}
	if tw.GetReported() == nil {
		return nil, status.Errorf(codes.InvalidArgument, "device %s, property %q: reported is required: the value read from the device", dev, name)
	}
	value := tw.GetReported().GetValue()
	if len(value) > maxValueBytes {
		return nil, status.Errorf(codes.InvalidArgument, "device %s, property %q: the reported value is %d bytes, at most %d are accepted", dev, name, len(value), maxValueBytes)
	}
	if err := checkType(typ, value); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "device %s, property %q: reported value %q %v (type %s in model %s)",
			dev, name, value, err, typ, held.Device.GetModelName())
	}
	out := &edgesyncv1.Twin{
		PropertyName: name,
		Reported:     &edgesyncv1.TwinValue{Value: value, Metadata: tw.GetReported().GetMetadata()},
	}
	if od := tw.GetObservedDesired(); od != nil {
		out.ObservedDesired = &edgesyncv1.TwinValue{Value: od.GetValue(), Metadata: od.GetMetadata()}
	}
	return out, nil
}

// checkType checks a reported value against a model property's type; an
// empty value (nothing read yet) fits every type.
func checkType(typ, value string) error {
	if value == "" {
		return nil
	}
	switch strings.ToUpper(typ) {
	case "INT":
		if _, err := strconv.ParseInt(value, 10, 64); err != nil {
			return fmt.Errorf("is not an integer")
		}
	case "FLOAT", "DOUBLE":
		if _, err := strconv.ParseFloat(value, 64); err != nil {
			return fmt.Errorf("is not a number")
		}
	case "BOOLEAN":
		if value != "true" && value != "false" {
			return fmt.Errorf("is neither true nor false")
		}
	}
	return nil
}

// deviceStatus is what mappers reported about one device, merged: each
// report brings some twins or the state.
type deviceStatus struct {
	twins      map[string]*edgesyncv1.Twin
	state      string
	lastOnline time.Time
	// sent is the fingerprint of the status last sent, and sentAt when.
	sent   string
	sentAt time.Time
}

// merge applies change to the device's merged status and sends it when
// something other than timestamps changed, or the last one was sent
// StatusRefresh ago.
func (m *Manager) merge(key edgeclient.Key, held *edgeclient.Device, change func(*deviceStatus)) {
	m.mu.Lock()
	defer m.mu.Unlock() // the client only queues the report: it never blocks
	st := m.statuses[key]
	if st == nil {
		st = &deviceStatus{twins: map[string]*edgesyncv1.Twin{}}
		m.statuses[key] = st
	}
	change(st)
	delete(m.noMapper, key)
	msg, fp := st.build(key, held)
	now := m.cfg.now()
	if fp == st.sent && now.Sub(st.sentAt) < m.cfg.StatusRefresh {
		return
	}
	if _, err := m.node.ReportDeviceStatus(msg); err != nil {
		m.log.Warn("cannot report device status", zap.Stringer("device", key), zap.Error(err))
		return
	}
	st.sent, st.sentAt = fp, now
}

// build makes the DeviceStatus report, twins in the device's property
// order, and its fingerprint without timestamps.
func (st *deviceStatus) build(key edgeclient.Key, held *edgeclient.Device) (*edgesyncv1.DeviceStatus, string) {
	msg := &edgesyncv1.DeviceStatus{Namespace: key.Namespace, Name: key.Name, State: st.state}
	if !st.lastOnline.IsZero() {
		msg.LastOnlineTime = timestamppb.New(st.lastOnline.Truncate(time.Second))
	}
	var order []string
	for _, p := range held.Device.GetProperties() {
		order = append(order, p.GetName())
	}
	for _, name := range slices.Sorted(maps.Keys(st.twins)) {
		if !slices.Contains(order, name) {
			order = append(order, name)
		}
	}
	var fp strings.Builder
	fmt.Fprintf(&fp, "state=%q;", st.state)
	for _, name := range order {
		t, ok := st.twins[name]
		if !ok {
			continue
		}
		msg.Twins = append(msg.Twins, t)
		fmt.Fprintf(&fp, "%q=%s/%s;", name, fingerprint(t.GetReported()), fingerprint(t.GetObservedDesired()))
	}
	return msg, fp.String()
}

// fingerprint is a value and its metadata but the timestamp.
func fingerprint(v *edgesyncv1.TwinValue) string {
	if v == nil {
		return "-"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%q", v.GetValue())
	for _, k := range slices.Sorted(maps.Keys(v.GetMetadata())) {
		if k != "timestamp" {
			fmt.Fprintf(&b, ",%q:%q", k, v.GetMetadata()[k])
		}
	}
	return b.String()
}
