// Command edgesync-demo-mapper is a small KubeEdge DMI mapper for `make
// dev`: it registers with edgesync-agent (--devices dmi) for one protocol,
// keeps the devices the agent gives it, and every --interval reports for
// each of them a simulated reading: a property with a desired value reports
// that value (as if the device took it), the others wander around 21.
// Real mappers speak a device protocol instead; the DMI side is the same.
//
//	edgesync-demo-mapper --manager /etc/kubeedge/dmi.sock --socket /tmp/demo-mapper.sock --protocol modbus
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	dmiv1beta1 "github.com/edgesync/edgesync/gen/dmi/v1beta1"
)

func main() {
	manager := flag.String("manager", "/etc/kubeedge/dmi.sock", "edgesync-agent's DMI socket (--dmi-socket)")
	socket := flag.String("socket", "/tmp/edgesync-demo-mapper.sock", "the UNIX socket this mapper serves DeviceMapperService on")
	protocol := flag.String("protocol", "modbus", "the spec.protocol.protocolName of the devices this mapper drives")
	interval := flag.Duration("interval", 5*time.Second, "how often each device reports")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *manager, *socket, *protocol, *interval); err != nil {
		fmt.Fprintln(os.Stderr, "edgesync-demo-mapper:", err)
		os.Exit(1)
	}
}

// devices holds the devices the agent gave the mapper.
type devices struct {
	dmiv1beta1.UnimplementedDeviceMapperServiceServer
	mu    sync.Mutex // guards byKey
	byKey map[string]*dmiv1beta1.Device
}

func (d *devices) put(dev *dmiv1beta1.Device, how string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.byKey[dev.GetNamespace()+"/"+dev.GetName()] = dev
	fmt.Printf("%s %s/%s", how, dev.GetNamespace(), dev.GetName())
	for _, p := range dev.GetSpec().GetProperties() {
		if v := p.GetDesired().GetValue(); v != "" {
			fmt.Printf(" %s=%s", p.GetName(), v)
		}
	}
	fmt.Println()
}

func (d *devices) RegisterDevice(_ context.Context, r *dmiv1beta1.RegisterDeviceRequest) (*dmiv1beta1.RegisterDeviceResponse, error) {
	d.put(r.GetDevice(), "device added")
	return &dmiv1beta1.RegisterDeviceResponse{DeviceName: r.GetDevice().GetName(), DeviceNamespace: r.GetDevice().GetNamespace()}, nil
}

func (d *devices) UpdateDevice(_ context.Context, r *dmiv1beta1.UpdateDeviceRequest) (*dmiv1beta1.UpdateDeviceResponse, error) {
	d.put(r.GetDevice(), "device updated")
	return &dmiv1beta1.UpdateDeviceResponse{}, nil
}

func (d *devices) RemoveDevice(_ context.Context, r *dmiv1beta1.RemoveDeviceRequest) (*dmiv1beta1.RemoveDeviceResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.byKey, r.GetDeviceNamespace()+"/"+r.GetDeviceName())
	fmt.Printf("device removed %s/%s\n", r.GetDeviceNamespace(), r.GetDeviceName())
	return &dmiv1beta1.RemoveDeviceResponse{}, nil
}

func (d *devices) CreateDeviceModel(_ context.Context, r *dmiv1beta1.CreateDeviceModelRequest) (*dmiv1beta1.CreateDeviceModelResponse, error) {
	return &dmiv1beta1.CreateDeviceModelResponse{DeviceModelName: r.GetModel().GetName(), DeviceModelNamespace: r.GetModel().GetNamespace()}, nil
}

func (d *devices) UpdateDeviceModel(context.Context, *dmiv1beta1.UpdateDeviceModelRequest) (*dmiv1beta1.UpdateDeviceModelResponse, error) {
	return &dmiv1beta1.UpdateDeviceModelResponse{}, nil
}

func (d *devices) RemoveDeviceModel(context.Context, *dmiv1beta1.RemoveDeviceModelRequest) (*dmiv1beta1.RemoveDeviceModelResponse, error) {
	return &dmiv1beta1.RemoveDeviceModelResponse{}, nil
}

func (d *devices) snapshot() []*dmiv1beta1.Device {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*dmiv1beta1.Device, 0, len(d.byKey))
	for _, dev := range d.byKey {
		out = append(out, dev)
	}
	return out
}

func run(ctx context.Context, managerSocket, socket, protocol string, interval time.Duration) error {
	_ = os.Remove(socket)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	defer os.Remove(socket)
	held := &devices{byKey: map[string]*dmiv1beta1.Device{}}
	srv := grpc.NewServer()
	dmiv1beta1.RegisterDeviceMapperServiceServer(srv, held)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() { srv.Stop(); <-served }()

	conn, err := grpc.NewClient("unix://"+managerSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	agent := dmiv1beta1.NewDeviceManagerServiceClient(conn)
	// Like KubeEdge's mappers: wait for the agent's socket, then register.
	var resp *dmiv1beta1.MapperRegisterResponse
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err = agent.MapperRegister(rctx, &dmiv1beta1.MapperRegisterRequest{WithData: true, Mapper: &dmiv1beta1.MapperInfo{
			Name: "edgesync-demo-mapper", Version: "v1", ApiVersion: "v1beta1", Protocol: protocol, Address: []byte(socket), State: "ok",
		}}, grpc.WaitForReady(true))
		cancel()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	fmt.Printf("registered with %s for protocol %q: %d devices\n", managerSocket, protocol, len(resp.GetDeviceList()))
	for _, dev := range resp.GetDeviceList() {
		held.put(dev, "device added")
	}

	reading := 21.0
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		reading += rand.Float64() - 0.5
		for _, dev := range held.snapshot() {
			report(ctx, agent, dev, reading)
		}
	}
}

// report sends one reading of every property of dev, and its state.
func report(ctx context.Context, agent dmiv1beta1.DeviceManagerServiceClient, dev *dmiv1beta1.Device, reading float64) {
	now := fmt.Sprint(time.Now().UnixMilli())
	st := &dmiv1beta1.DeviceStatus{}
	for _, p := range dev.GetSpec().GetProperties() {
		value := p.GetDesired().GetValue()
		if value == "" {
			value = fmt.Sprintf("%.1f", reading)
		}
		st.Twins = append(st.Twins, &dmiv1beta1.Twin{
			PropertyName:    p.GetName(),
			Reported:        &dmiv1beta1.TwinProperty{Value: value, Metadata: map[string]string{"timestamp": now}},
			ObservedDesired: &dmiv1beta1.TwinProperty{Value: p.GetDesired().GetValue()},
		})
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := agent.ReportDeviceStatus(rctx, &dmiv1beta1.ReportDeviceStatusRequest{
		DeviceName: dev.GetName(), DeviceNamespace: dev.GetNamespace(), ReportedDevice: st,
	}); err != nil {
		fmt.Fprintf(os.Stderr, "report %s/%s: %v\n", dev.GetNamespace(), dev.GetName(), err)
		return
	}
	if _, err := agent.ReportDeviceStates(rctx, &dmiv1beta1.ReportDeviceStatesRequest{
		DeviceName: dev.GetName(), DeviceNamespace: dev.GetNamespace(), State: "online",
	}); err != nil {
		fmt.Fprintf(os.Stderr, "report state of %s/%s: %v\n", dev.GetNamespace(), dev.GetName(), err)
	}
}
