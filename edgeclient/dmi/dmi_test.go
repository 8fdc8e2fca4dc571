package dmi

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/edgesync/edgesync/edgeclient"
	dmiv1beta1 "github.com/edgesync/edgesync/gen/dmi/v1beta1"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/internal/repo"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, repo.ClientGoLeakOptions()...) }

// fakeNode is a node's store and the reports it got.
type fakeNode struct {
	mu      sync.Mutex
	devices map[string]*edgeclient.Device
	reports chan *edgesyncv1.DeviceStatus
	events  chan edgeclient.EventReport
}

func newFakeNode() *fakeNode {
	return &fakeNode{devices: map[string]*edgeclient.Device{}, reports: make(chan *edgesyncv1.DeviceStatus, 100), events: make(chan edgeclient.EventReport, 100)}
}

func (n *fakeNode) Devices() ([]*edgeclient.Device, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*edgeclient.Device
	for _, d := range n.devices {
		out = append(out, d)
	}
	return out, nil
}

func (n *fakeNode) Device(namespace, name string) (*edgeclient.Device, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.devices[namespace+"/"+name], nil
}

func (n *fakeNode) ReportDeviceStatus(st *edgesyncv1.DeviceStatus) (*edgeclient.Report, error) {
	n.reports <- st
	return nil, nil
}

func (n *fakeNode) ReportEvent(ev edgeclient.EventReport) error {
	n.events <- ev
	return nil
}

// put stores d and returns the event the client would deliver.
func (n *fakeNode) put(d *edgeclient.Device) edgeclient.Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := keyOf(d.Device)
	n.devices[key.Namespace+"/"+key.Name] = d
	return edgeclient.Event{Type: edgeclient.Modified, Key: key, Object: edgeclient.Object{Device: d}}
}

func (n *fakeNode) remove(namespace, name string) edgeclient.Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.devices, namespace+"/"+name)
	return edgeclient.Event{Type: edgeclient.Deleted, Key: edgeclient.Key{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: namespace, Name: name}}
}

// device is a thermometer with one INT property, version rv, over protocol.
func device(name, protocol, rv, desired string) *edgeclient.Device {
	cfg, _ := structpb.NewStruct(map[string]any{"slaveID": 1, "port": "/dev/ttyS0"})
	visit, _ := structpb.NewStruct(map[string]any{"register": "HoldingRegister", "offset": 2})
	push, _ := structpb.NewStruct(map[string]any{"mqtt": map[string]any{"address": "tcp://127.0.0.1:1883", "topic": "temp", "qos": 1, "retained": true}})
	return &edgeclient.Device{
		Device: &edgesyncv1.Device{
			Metadata:  &metav1pb.ObjectMeta{Namespace: proto.String("ns"), Name: proto.String(name), ResourceVersion: proto.String(rv + "/1")},
			ModelName: "thermometer", NodeName: "edge-1",
			Protocol: &edgesyncv1.ProtocolConfig{ProtocolName: protocol, ConfigData: cfg},
			Properties: []*edgesyncv1.DeviceProperty{
				{Name: "temperature", Desired: &edgesyncv1.TwinValue{Value: desired}, Visitors: &edgesyncv1.ProtocolConfig{ProtocolName: protocol, ConfigData: visit}, PushMethod: push, ReportCycle: 1000},
				{Name: "label"}, // no desired, no visitors
			},
		},
		Model: &edgesyncv1.DeviceModel{
			Metadata: &metav1pb.ObjectMeta{Namespace: proto.String("ns"), Name: proto.String("thermometer"), ResourceVersion: proto.String("1")},
			Protocol: protocol,
			Properties: []*edgesyncv1.ModelProperty{
				{Name: "temperature", Type: "INT", AccessMode: "ReadWrite"},
				{Name: "label", Type: "STRING", AccessMode: "ReadOnly"},
			},
		},
	}
}

// testMapper serves DeviceMapperService and records the calls.
type testMapper struct {
	dmiv1beta1.UnimplementedDeviceMapperServiceServer
	socket string
	calls  chan string
}

func (tm *testMapper) RegisterDevice(_ context.Context, r *dmiv1beta1.RegisterDeviceRequest) (*dmiv1beta1.RegisterDeviceResponse, error) {
	tm.calls <- "RegisterDevice " + r.GetDevice().GetName() + " desired=" + r.GetDevice().GetSpec().GetProperties()[0].GetDesired().GetValue()
	return &dmiv1beta1.RegisterDeviceResponse{DeviceName: r.GetDevice().GetName()}, nil
}

func (tm *testMapper) UpdateDevice(_ context.Context, r *dmiv1beta1.UpdateDeviceRequest) (*dmiv1beta1.UpdateDeviceResponse, error) {
	tm.calls <- "UpdateDevice " + r.GetDevice().GetName() + " desired=" + r.GetDevice().GetSpec().GetProperties()[0].GetDesired().GetValue()
	return &dmiv1beta1.UpdateDeviceResponse{}, nil
}

func (tm *testMapper) RemoveDevice(_ context.Context, r *dmiv1beta1.RemoveDeviceRequest) (*dmiv1beta1.RemoveDeviceResponse, error) {
	tm.calls <- "RemoveDevice " + r.GetDeviceName()
	return &dmiv1beta1.RemoveDeviceResponse{}, nil
}

func (tm *testMapper) CreateDeviceModel(_ context.Context, r *dmiv1beta1.CreateDeviceModelRequest) (*dmiv1beta1.CreateDeviceModelResponse, error) {
	tm.calls <- "CreateDeviceModel " + r.GetModel().GetName()
	return &dmiv1beta1.CreateDeviceModelResponse{}, nil
}

func (tm *testMapper) RemoveDeviceModel(_ context.Context, r *dmiv1beta1.RemoveDeviceModelRequest) (*dmiv1beta1.RemoveDeviceModelResponse, error) {
	tm.calls <- "RemoveDeviceModel " + r.GetModelName()
	return &dmiv1beta1.RemoveDeviceModelResponse{}, nil
}

func startMapper(t *testing.T, dir, name string) *testMapper {
	t.Helper()
	tm := &testMapper{socket: filepath.Join(dir, name+".sock"), calls: make(chan string, 100)}
	lis, err := net.Listen("unix", tm.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	dmiv1beta1.RegisterDeviceMapperServiceServer(srv, tm)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return tm
}

func (tm *testMapper) want(t *testing.T, call string) {
	t.Helper()
	select {
	case got := <-tm.calls:
		if got != call {
			t.Fatalf("mapper got %q, want %q", got, call)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("mapper did not get %q", call)
	}
}

// env is a manager serving on a socket in a short temporary directory.
type env struct {
	node    *fakeNode
	m       *Manager
	dir     string
	manager dmiv1beta1.DeviceManagerServiceClient
}

func start(t *testing.T, node *fakeNode, grace time.Duration) *env {
	t.Helper()
	// UNIX socket paths are short (108 bytes): t.TempDir may be too long.
	dir, err := os.MkdirTemp("", "dmi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	m, err := New(Config{Node: node, NodeName: "edge-1", SocketPath: filepath.Join(dir, "dmi.sock"), NoMapperGrace: grace,
		CallTimeout: 2 * time.Second, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// Calls wait until Run serves the socket.
	conn, err := grpc.NewClient("unix://"+m.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &env{node: node, m: m, dir: dir, manager: dmiv1beta1.NewDeviceManagerServiceClient(conn)}
}

func (e *env) register(t *testing.T, tm *testMapper, protocol string) *dmiv1beta1.MapperRegisterResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.manager.MapperRegister(ctx, &dmiv1beta1.MapperRegisterRequest{WithData: true,
		Mapper: &dmiv1beta1.MapperInfo{Name: protocol + "-mapper", Protocol: protocol, Address: []byte(tm.socket)}},
		grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("MapperRegister: %v", err)
	}
	return resp
}

func TestRegisterAnswersDevicesOfItsProtocolFilledIn(t *testing.T) {
	node := newFakeNode()
	node.put(device("thermo-1", "modbus", "1", "20"))
	node.put(device("thermo-2", "modbus", "1", "21"))
	node.put(device("ble-1", "bluetooth", "1", "5"))
	e := start(t, node, time.Hour)
	tm := startMapper(t, e.dir, "modbus")
	resp := e.register(t, tm, "modbus")

	var names []string
	for _, d := range resp.GetDeviceList() {
		names = append(names, d.GetNamespace()+"/"+d.GetName())
	}
	if got := strings.Join(names, ","); got != "ns/thermo-1,ns/thermo-2" {
		t.Fatalf("registration answered devices %s, want ns/thermo-1,ns/thermo-2 (modbus only)", got)
	}
	if n := len(resp.GetModelList()); n != 1 || resp.GetModelList()[0].GetName() != "thermometer" {
		t.Fatalf("registration answered models %v, want thermometer once", resp.GetModelList())
	}
	d := resp.GetDeviceList()[0]
	if d.GetSpec().GetDeviceModelReference() != "thermometer" || d.GetSpec().GetProtocol().GetProtocolName() != "modbus" {
		t.Errorf("device spec %v", d.GetSpec())
	}
	slave := &wrapperspb.FloatValue{}
	if err := d.GetSpec().GetProtocol().GetConfigData().GetData()["slaveID"].UnmarshalTo(slave); err != nil || slave.GetValue() != 1 {
		t.Errorf("configData.slaveID = %v (%v), want FloatValue 1 as edgecore packs numbers", slave, err)
	}
	port := &wrapperspb.StringValue{}
	if err := d.GetSpec().GetProtocol().GetConfigData().GetData()["port"].UnmarshalTo(port); err != nil || port.GetValue() != "/dev/ttyS0" {
		t.Errorf("configData.port = %v (%v), want StringValue /dev/ttyS0", port, err)
	}
	temp, label := d.GetSpec().GetProperties()[0], d.GetSpec().GetProperties()[1]
	if temp.GetDesired().GetValue() != "20" || temp.GetReportCycle() != 1000 {
		t.Errorf("temperature property %v", temp)
	}
	if mq := temp.GetPushMethod().GetMqtt(); mq.GetAddress() != "tcp://127.0.0.1:1883" || mq.GetTopic() != "temp" || mq.GetQos() != 1 || !mq.GetRetained() {
		t.Errorf("pushMethod.mqtt = %v, want the device's unchanged", mq)
	}
	// Framework mappers dereference these without checking.
	if label.Desired == nil || label.Visitors == nil || label.Visitors.ConfigData == nil || label.Visitors.GetProtocolName() != "modbus" {
		t.Errorf("a property without desired or visitors must get them filled in: %v", label)
	}
}

func TestDevicesFollowTheNodeAndReRegistrationReplays(t *testing.T) {
	node := newFakeNode()
	e := start(t, node, time.Hour)
	tm := startMapper(t, e.dir, "modbus")
	if resp := e.register(t, tm, "modbus"); len(resp.GetDeviceList()) != 0 {
		t.Fatalf("registration with no devices answered %v", resp.GetDeviceList())
	}

	e.m.Changed(node.put(device("thermo-1", "modbus", "1", "20")))
	tm.want(t, "CreateDeviceModel thermometer")
	tm.want(t, "RegisterDevice thermo-1 desired=20")
	e.m.Changed(node.put(device("thermo-1", "modbus", "2", "25")))
	tm.want(t, "UpdateDevice thermo-1 desired=25")

	// Restarted, the mapper registers again: it gets the device back in
	// the answer, and later changes by call.
	tm2 := startMapper(t, e.dir, "modbus-2")
	resp := e.register(t, tm2, "modbus")
	if len(resp.GetDeviceList()) != 1 || resp.GetDeviceList()[0].GetSpec().GetProperties()[0].GetDesired().GetValue() != "25" {
		t.Fatalf("re-registration answered %v, want thermo-1 with desired 25", resp.GetDeviceList())
	}
	e.m.Changed(node.put(device("thermo-1", "modbus", "3", "26")))
	tm2.want(t, "UpdateDevice thermo-1 desired=26")

	// The device moves to another protocol, then goes away.
	e.m.Changed(node.put(device("thermo-1", "bluetooth", "4", "26")))
	tm2.want(t, "RemoveDevice thermo-1")
	tm2.want(t, "RemoveDeviceModel thermometer")
	select {
	case call := <-tm.calls:
		t.Errorf("the replaced mapper was called: %s", call)
	default:
	}
}

func TestDeviceWithoutMapperSaysSo(t *testing.T) {
	node := newFakeNode()
	node.put(device("thermo-1", "opcua", "1", "20"))
	start(t, node, time.Millisecond)
	select {
	case st := <-node.reports:
		if !strings.Contains(st.GetState(), `no mapper for protocol "opcua"`) || st.GetName() != "thermo-1" {
			t.Fatalf("status %v does not say there is no opcua mapper", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no status for a device without a mapper")
	}
	if ev := <-node.events; ev.Reason != "NoMapper" || ev.Type != "Warning" {
		t.Errorf("event %+v, want a NoMapper warning", ev)
	}
}

func TestReportsBecomeDeviceStatus(t *testing.T) {
	node := newFakeNode()
	node.put(device("thermo-1", "modbus", "1", "20"))
	e := start(t, node, time.Hour)
	ctx := t.Context()
	report := func(value string) error {
		_, err := e.manager.ReportDeviceStatus(ctx, &dmiv1beta1.ReportDeviceStatusRequest{DeviceName: "thermo-1", DeviceNamespace: "ns",
			ReportedDevice: &dmiv1beta1.DeviceStatus{Twins: []*dmiv1beta1.Twin{{PropertyName: "temperature",
				Reported:        &dmiv1beta1.TwinProperty{Value: value, Metadata: map[string]string{"timestamp": value, "type": "int"}},
				ObservedDesired: &dmiv1beta1.TwinProperty{Value: "20"}}}}}, grpc.WaitForReady(true))
		return err
	}
	if err := report("21"); err != nil {
		t.Fatal(err)
	}
	st := <-node.reports
	if tw := st.GetTwins(); len(tw) != 1 || tw[0].GetReported().GetValue() != "21" || tw[0].GetObservedDesired().GetValue() != "20" || tw[0].GetReported().GetMetadata()["type"] != "int" {
		t.Fatalf("status twins %v", tw)
	}
	// The state merges with the twins.
	if _, err := e.manager.ReportDeviceStates(ctx, &dmiv1beta1.ReportDeviceStatesRequest{DeviceName: "thermo-1", DeviceNamespace: "ns", State: "online"}); err != nil {
		t.Fatal(err)
	}
	st = <-node.reports
	if st.GetState() != "online" || len(st.GetTwins()) != 1 || st.GetLastOnlineTime() == nil {
		t.Fatalf("status after state report %v", st)
	}
	// The same value again (a new timestamp only) is not sent again.
	if err := report("21"); err != nil {
		t.Fatal(err)
	}
	if err := report("22"); err != nil {
		t.Fatal(err)
	}
	if st := <-node.reports; st.GetTwins()[0].GetReported().GetValue() != "22" {
		t.Fatalf("next status %v, want the changed value 22 (and no resend of 21)", st)
	}
}

func TestRefusals(t *testing.T) {
	node := newFakeNode()
	node.put(device("thermo-1", "modbus", "1", "20"))
	e := start(t, node, time.Hour)
	ctx := t.Context()
	twin := func(prop, value string) *dmiv1beta1.DeviceStatus {
		return &dmiv1beta1.DeviceStatus{Twins: []*dmiv1beta1.Twin{{PropertyName: prop, Reported: &dmiv1beta1.TwinProperty{Value: value}}}}
	}
	sock := filepath.Join(e.dir, "m.sock")
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"register without protocol", func() error {
			_, err := e.manager.MapperRegister(ctx, &dmiv1beta1.MapperRegisterRequest{Mapper: &dmiv1beta1.MapperInfo{Name: "m", Address: []byte(sock)}})
			return err
		}, codes.InvalidArgument, `mapper "m" has no protocol`},
		{"register with a TCP address", func() error {
			_, err := e.manager.MapperRegister(ctx, &dmiv1beta1.MapperRegisterRequest{Mapper: &dmiv1beta1.MapperInfo{Name: "m", Protocol: "modbus", Address: []byte("10.0.0.1:80")}})
			return err
		}, codes.InvalidArgument, "not the absolute path of a UNIX socket"},
		{"unknown device", func() error {
			_, err := e.manager.ReportDeviceStatus(ctx, &dmiv1beta1.ReportDeviceStatusRequest{DeviceName: "ghost", DeviceNamespace: "ns", ReportedDevice: twin("temperature", "1")})
			return err
		}, codes.NotFound, "device ns/ghost is not bound to node edge-1"},
		{"another namespace's device", func() error {
			_, err := e.manager.ReportDeviceStates(ctx, &dmiv1beta1.ReportDeviceStatesRequest{DeviceName: "thermo-1", DeviceNamespace: "other", State: "online"})
			return err
		}, codes.NotFound, "device other/thermo-1 is not bound to node edge-1"},
		{"unknown property", func() error {
			_, err := e.manager.ReportDeviceStatus(ctx, &dmiv1beta1.ReportDeviceStatusRequest{DeviceName: "thermo-1", DeviceNamespace: "ns", ReportedDevice: twin("humidity", "1")})
			return err
		}, codes.InvalidArgument, `device ns/thermo-1 has no property "humidity" (its properties: temperature, label)`},
		{"malformed value", func() error {
			_, err := e.manager.ReportDeviceStatus(ctx, &dmiv1beta1.ReportDeviceStatusRequest{DeviceName: "thermo-1", DeviceNamespace: "ns", ReportedDevice: twin("temperature", "warm")})
			return err
		}, codes.InvalidArgument, `property "temperature": reported value "warm" is not an integer (type INT in model thermometer)`},
		{"no twins", func() error {
			_, err := e.manager.ReportDeviceStatus(ctx, &dmiv1beta1.ReportDeviceStatusRequest{DeviceName: "thermo-1", DeviceNamespace: "ns"})
			return err
		}, codes.InvalidArgument, "reportedDevice.twins is empty"},
		{"empty state", func() error {
			_, err := e.manager.ReportDeviceStates(ctx, &dmiv1beta1.ReportDeviceStatesRequest{DeviceName: "thermo-1"})
			return err
		}, codes.InvalidArgument, "state is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
				t.Fatalf("got %v, want %s containing %q", err, tc.code, tc.msg)
			}
		})
	}
	// Nothing refused reached the node; a good report still does.
	if _, err := e.manager.ReportDeviceStatus(ctx, &dmiv1beta1.ReportDeviceStatusRequest{DeviceName: "thermo-1", ReportedDevice: twin("temperature", "19")}); err != nil {
		t.Fatalf("a report without namespace for the only thermo-1: %v", err)
	}
	st := <-node.reports
	if st.GetNamespace() != "ns" || st.GetTwins()[0].GetReported().GetValue() != "19" {
		t.Fatalf("first status reaching the node: %v", st)
	}
	select {
	case st := <-node.reports:
		t.Fatalf("unexpected status %v", st)
	default:
	}
	fi, err := os.Stat(e.m.SocketPath())
	if err != nil || fi.Mode().Perm() != DefaultSocketMode {
		t.Errorf("socket mode %v (%v), want %v", fi.Mode().Perm(), err, os.FileMode(DefaultSocketMode))
	}
}

func ExampleManager() {
	// In an agent: the client delivers changes, the manager drives mappers.
	var c *edgeclient.Client // edgeclient.New(...)
	m, err := New(Config{Node: c, NodeName: "edge-1"})
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = m.Changed // from edgeclient.Config.OnEvent
	_ = m.Run     // next to c.Run
}

// BenchmarkReportDeviceStatus measures one mapper reporting a changing
// value over the socket: check, merge and hand-off to the client.
func BenchmarkReportDeviceStatus(b *testing.B) {
	node := newFakeNode()
	node.reports = make(chan *edgesyncv1.DeviceStatus, b.N+10)
	node.put(device("thermo-1", "modbus", "1", "20"))
	dir, err := os.MkdirTemp("", "dmi")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	m, err := New(Config{Node: node, NodeName: "edge-1", SocketPath: filepath.Join(dir, "dmi.sock"), NoMapperGrace: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	conn, err := grpc.NewClient("unix://"+m.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := dmiv1beta1.NewDeviceManagerServiceClient(conn)
	b.ResetTimer()
	for i := range b.N {
		_, err := client.ReportDeviceStatus(ctx, &dmiv1beta1.ReportDeviceStatusRequest{DeviceName: "thermo-1", DeviceNamespace: "ns",
			ReportedDevice: &dmiv1beta1.DeviceStatus{Twins: []*dmiv1beta1.Twin{{PropertyName: "temperature",
				Reported: &dmiv1beta1.TwinProperty{Value: fmt.Sprint(i % 100)}}}}})
		if err != nil {
			b.Fatal(err)
		}
	}
}
