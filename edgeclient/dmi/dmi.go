// Package dmi is the device manager side of KubeEdge's Device Management
// Interface (DMI v1beta1) for edge agents built on edgeclient: it lets the
// mappers KubeEdge users already run (processes that drive devices over
// Modbus, OPC UA, BLE, ...) drive the devices an edgesync node holds,
// unchanged.
//
// A Manager serves DeviceManagerService on a UNIX socket (by default
// DefaultSocketPath, KubeEdge's). A mapper registers with its protocol and
// the socket it serves DeviceMapperService on; the answer lists the devices
// of that protocol the node holds (spec.protocol.protocolName) and their
// models, read from the local store, so a mapper that restarts, or starts
// while the cloud is unreachable, gets them all again. From then on the
// Manager calls the mapper back: RegisterDevice, UpdateDevice (a new version,
// for example a desired value changed with kubectl), RemoveDevice, and
// Create/Update/RemoveDeviceModel for the models its devices use, retrying
// with backoff while the mapper does not answer.
//
// What mappers report (ReportDeviceStatus: twins; ReportDeviceStates: the
// device's state) is merged per device and becomes the node's DeviceStatus
// report (edgeclient.Client.ReportDeviceStatus), which the client keeps
// until the cloud answers, across disconnections. A report about a device
// the node does not hold, a property the device does not have or a value
// that does not fit the property's type in the model is refused with a
// gRPC status saying what to fix, and changes nothing. A device whose
// protocol has no mapper reports so in its status (state), once a grace
// period after start has passed.
//
// GetDevice is never called (KubeEdge's edgecore does not call it either).
package dmi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"k8s.io/client-go/util/workqueue"

	"github.com/edgesync/edgesync/edgeclient"
	dmiv1beta1 "github.com/edgesync/edgesync/gen/dmi/v1beta1"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// DefaultSocketPath is where KubeEdge's edgecore serves DMI, and where
// KubeEdge's mappers look for it by default.
const DefaultSocketPath = "/etc/kubeedge/dmi.sock"

// Defaults of Config.
const (
	DefaultNoMapperGrace = 30 * time.Second
	DefaultCallTimeout   = 10 * time.Second
	DefaultStatusRefresh = time.Minute
	DefaultSocketMode    = 0o660
)

// Node is what the Manager needs of the node's edgeclient.Client, which
// implements it.
type Node interface {
	// Devices and Device read the devices the node holds from the store.
	Devices() ([]*edgeclient.Device, error)
	Device(namespace, name string) (*edgeclient.Device, error)
	ReportDeviceStatus(st *edgesyncv1.DeviceStatus) (*edgeclient.Report, error)
	ReportEvent(ev edgeclient.EventReport) error
}

// Config configures a Manager.
type Config struct {
	// Node is the node's client.
	Node Node
	// NodeName is the node's name, for messages.
	NodeName string
	// SocketPath is the UNIX socket DeviceManagerService is served on;
	// default DefaultSocketPath. Its directory is created if missing; a
	// socket left there by an earlier run is replaced.
	SocketPath string
	// SocketMode is the socket file's permission bits; default
	// DefaultSocketMode (owner and group). Whoever can connect can
	// register a mapper and receive the devices' configuration.
	SocketMode fs.FileMode
	// NoMapperGrace is how long after start a device may wait for a mapper
	// of its protocol before its status says there is none; default
	// DefaultNoMapperGrace. Later devices say so at once.
	NoMapperGrace time.Duration
	// CallTimeout bounds each call to a mapper; default
	// DefaultCallTimeout.
	CallTimeout time.Duration
	// StatusRefresh is how often a device's status is sent again when
	// only its timestamps changed (mappers report about once a second);
	// default DefaultStatusRefresh. A changed value or state is sent at
	// once.
	StatusRefresh time.Duration
	// Logger receives the manager's logs; nil means none.
	Logger *zap.Logger
	// now returns the time; tests set it.
	now func() time.Time
}

// Manager serves DMI for one node. Create it with New, run it with Run,
// and pass it every change to what the node holds (Changed).
type Manager struct {
	cfg   Config
	log   *zap.Logger
	node  Node
	queue workqueue.TypedRateLimitingInterface[edgeclient.Key]

	mu sync.Mutex // guards the fields below
	// mappers holds the registered mapper of each protocol.
	mappers map[string]*mapper
	// placed says, per device, which mapper holds which version of it.
	placed map[edgeclient.Key]placement
	// statuses holds what mappers reported per device, merged.
	statuses map[edgeclient.Key]*deviceStatus
	// noMapper holds the devices whose status says there is no mapper.
	noMapper map[edgeclient.Key]string
	// started is when Run started serving; zero before.
	started time.Time
}

// placement is what a mapper was last given of a device.
type placement struct {
	mapper  *mapper
	version string
}

// New checks cfg. It neither listens nor starts goroutines: Run does.
func New(cfg Config) (*Manager, error) {
	if cfg.Node == nil {
		return nil, errors.New("dmi: Config.Node is required")
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = DefaultSocketPath
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = DefaultSocketMode
	}
	if cfg.NoMapperGrace <= 0 {
		cfg.NoMapperGrace = DefaultNoMapperGrace
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.StatusRefresh <= 0 {
		cfg.StatusRefresh = DefaultStatusRefresh
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Manager{
		cfg: cfg, log: log.Named("dmi"), node: cfg.Node,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[edgeclient.Key](200*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[edgeclient.Key]{Name: "dmi"}),
		mappers:  map[string]*mapper{},
		placed:   map[edgeclient.Key]placement{},
		statuses: map[edgeclient.Key]*deviceStatus{},
		noMapper: map[edgeclient.Key]string{},
	}, nil
}

// SocketPath is the socket the manager serves on.
func (m *Manager) SocketPath() string { return m.cfg.SocketPath }

// Changed takes a change to what the node holds; only devices matter. It
// never blocks: the mapper is called from Run's worker.
func (m *Manager) Changed(ev edgeclient.Event) {
	if ev.Key.Kind != edgesyncv1.Kind_KIND_DEVICE {
		return
	}
	m.queue.Add(ev.Key)
}

// Run serves DMI until ctx ends, then stops serving (letting calls under
// way finish for a few seconds), closes the connections to the mappers and
// removes the socket.
func (m *Manager) Run(ctx context.Context) error {
	lis, err := listen(m.cfg.SocketPath, m.cfg.SocketMode)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	dmiv1beta1.RegisterDeviceManagerServiceServer(srv, &service{m: m})

	m.mu.Lock()
	m.started = m.cfg.now()
	m.mu.Unlock()
	// Every held device: a mapper may register for it, or its status says
	// there is none once the grace period is over.
	held, err := m.node.Devices()
	if err != nil {
		lis.Close()
		return fmt.Errorf("dmi: read held devices: %w", err)
	}
	for _, d := range held {
		m.queue.Add(keyOf(d.Device))
	}
	m.log.Info("serving DMI", zap.String("socket", m.cfg.SocketPath), zap.Int("held_devices", len(held)))

	var wg sync.WaitGroup
	wg.Add(2)
	serveErr := make(chan error, 1)
	go func() {
		defer wg.Done()
		serveErr <- srv.Serve(lis)
	}()
	go func() {
		defer wg.Done()
		for m.work(ctx) {
		}
	}()
	select {
	case <-ctx.Done():
		err = nil
	case err = <-serveErr:
		err = fmt.Errorf("dmi: serve %s: %w", m.cfg.SocketPath, err)
	}
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
		<-stopped
	}
	m.queue.ShutDown()
	wg.Wait()
	m.mu.Lock()
	for _, mp := range m.mappers {
		mp.close()
	}
	m.mappers = map[string]*mapper{}
	m.mu.Unlock()
	if rmErr := os.Remove(m.cfg.SocketPath); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
		m.log.Warn("cannot remove the DMI socket", zap.Error(rmErr))
	}
	return err
}

// listen listens on a UNIX socket at path with mode, replacing a socket an
// earlier run left behind, but never another kind of file.
func listen(path string, mode fs.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("dmi: create the socket's directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("dmi: %s exists and is not a socket; remove it or choose another socket path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("dmi: remove the old socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("dmi: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("dmi: set the socket's mode: %w", err)
	}
	return lis, nil
}

// work syncs one device with the mappers; false once the queue shut down.
func (m *Manager) work(ctx context.Context) bool {
	key, shutdown := m.queue.Get()
	if shutdown {
		return false
	}
	defer m.queue.Done(key)
	retry, err := m.sync(ctx, key)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			m.log.Info("cannot bring a device to its mapper; retrying", zap.Stringer("device", key), zap.Error(err))
		}
		m.queue.AddRateLimited(key)
	case retry > 0:
		m.queue.Forget(key)
		m.queue.AddAfter(key, retry)
	default:
		m.queue.Forget(key)
	}
	return true
}

// sync brings the mappers in step with what the node holds of one device:
// the mapper of its protocol holds its current version and model, another
// mapper that held it no longer does. It returns when to look again (the
// end of the grace period for a device without a mapper).
func (m *Manager) sync(ctx context.Context, key edgeclient.Key) (time.Duration, error) {
	held, err := m.node.Device(key.Namespace, key.Name)
	if err != nil {
		return 0, fmt.Errorf("read the store: %w", err)
	}
	m.mu.Lock()
	was, wasPlaced := m.placed[key]
	var target *mapper
	if held != nil {
		target = m.mappers[protocolOf(held.Device)]
	}
	if wasPlaced && !m.current(was.mapper) {
		// That mapper registered again, or another replaced it: it got
		// what it holds in its registration answer, or is gone.
		delete(m.placed, key)
		wasPlaced = false
	}
	m.mu.Unlock()

	if wasPlaced && (held == nil || was.mapper != target) {
		if err := was.mapper.removeDevice(ctx, key); err != nil {
			return 0, err
		}
		m.mu.Lock()
		if m.placed[key] == was {
			delete(m.placed, key)
		}
		m.mu.Unlock()
		wasPlaced = false
		was.mapper.releaseModels(ctx, m.modelsInUse(was.mapper))
	}
	if held == nil {
		m.mu.Lock()
		delete(m.statuses, key)
		delete(m.noMapper, key)
		m.mu.Unlock()
		return 0, nil
	}
	if target == nil {
		return m.noMapperFor(key, held), nil
	}
	version := held.Device.GetMetadata().GetResourceVersion()
	if wasPlaced && was.version == version {
		return 0, nil
	}
	dev, err := toDevice(held.Device)
	if err != nil {
		// What the cloud sent cannot be expressed in DMI: say so; a new
		// version brings the device here again.
		m.log.Warn("cannot convert a device for its mapper", zap.Stringer("device", key), zap.Error(err))
		m.report(key, fmt.Sprintf("cannot hand the device to its mapper: %v", err))
		return 0, nil
	}
	if err := target.ensureModel(ctx, held.Model); err != nil {
		return 0, err
	}
	if wasPlaced {
		err = target.updateDevice(ctx, dev)
	} else {
		err = target.registerDevice(ctx, dev)
	}
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	if m.current(target) {
		m.placed[key] = placement{mapper: target, version: version}
	}
	m.mu.Unlock()
	target.releaseModels(ctx, m.modelsInUse(target))
	return 0, nil
}

// current tells whether mp is still the registered mapper of its protocol.
// m.mu must be held.
func (m *Manager) current(mp *mapper) bool {
	return mp != nil && m.mappers[mp.info.protocol] == mp
}

// modelsInUse returns the models of the devices placed on mp.
func (m *Manager) modelsInUse(mp *mapper) map[edgeclient.Key]bool {
	m.mu.Lock()
	var keys []edgeclient.Key
	for k, p := range m.placed {
		if p.mapper == mp {
			keys = append(keys, k)
		}
	}
	m.mu.Unlock()
	inUse := map[edgeclient.Key]bool{}
	for _, k := range keys {
		if d, err := m.node.Device(k.Namespace, k.Name); err == nil && d != nil && d.Device.GetModelName() != "" {
			inUse[modelKey(k.Namespace, d.Device.GetModelName())] = true
		}
	}
	return inUse
}

// noMapperFor makes the status of a device without a mapper say so, once
// the grace period is over; before, it returns how long is left.
func (m *Manager) noMapperFor(key edgeclient.Key, held *edgeclient.Device) time.Duration {
	protocol := protocolOf(held.Device)
	m.mu.Lock()
	left := m.cfg.NoMapperGrace - m.cfg.now().Sub(m.started)
	said := m.noMapper[key] == protocol
	m.mu.Unlock()
	if left > 0 {
		return left
	}
	if said {
		return 0
	}
	var why string
	if protocol == "" {
		why = "no mapper: the device has no spec.protocol.protocolName, which names the mapper that drives it"
	} else {
		why = fmt.Sprintf("no mapper: no mapper for protocol %q is registered on node %s (DMI socket %s)", protocol, m.cfg.NodeName, m.cfg.SocketPath)
	}
	m.report(key, why)
	if err := m.node.ReportEvent(edgeclient.EventReport{
		Regarding: key, Type: "Warning", Reason: "NoMapper", Action: "Register", Note: why,
	}); err != nil {
		m.log.Debug("cannot report event", zap.Error(err))
	}
	m.mu.Lock()
	m.noMapper[key] = protocol
	m.mu.Unlock()
	return 0
}

// report sends the status of a device no mapper reports about: no twins,
// state why.
func (m *Manager) report(key edgeclient.Key, why string) {
	st := &edgesyncv1.DeviceStatus{Namespace: key.Namespace, Name: key.Name, State: why}
	if _, err := m.node.ReportDeviceStatus(st); err != nil {
		m.log.Warn("cannot report device status", zap.Stringer("device", key), zap.Error(err))
	}
}

// register makes mp the mapper of its protocol and returns the devices of
// that protocol the node holds and their models. Without withData the
// mapper gets them through RegisterDevice calls instead.
func (m *Manager) register(mp *mapper, withData bool) ([]*dmiv1beta1.Device, []*dmiv1beta1.DeviceModel, error) {
	held, err := m.node.Devices()
	if err != nil {
		return nil, nil, fmt.Errorf("read the store: %w", err)
	}
	var (
		devices []*dmiv1beta1.Device
		models  []*dmiv1beta1.DeviceModel
		placed  = map[edgeclient.Key]placement{}
		sent    = map[edgeclient.Key]string{}
	)
	for _, d := range held {
		if !withData || protocolOf(d.Device) != mp.info.protocol {
			continue
		}
		key := keyOf(d.Device)
		dev, err := toDevice(d.Device)
		if err != nil {
			m.log.Warn("cannot convert a device for its mapper", zap.Stringer("device", key), zap.Error(err))
			continue
		}
		devices = append(devices, dev)
		placed[key] = placement{mapper: mp, version: d.Device.GetMetadata().GetResourceVersion()}
		if model := d.Model; model != nil {
			mk := modelKey(model.GetMetadata().GetNamespace(), model.GetMetadata().GetName())
			if _, ok := sent[mk]; !ok {
				models = append(models, toModel(model))
			}
			sent[mk] = model.GetMetadata().GetResourceVersion()
		}
	}
	mp.setModels(sent)

	m.mu.Lock()
	old := m.mappers[mp.info.protocol]
	m.mappers[mp.info.protocol] = mp
	for k, p := range m.placed {
		if p.mapper == old {
			delete(m.placed, k)
		}
	}
	for k, p := range placed {
		m.placed[k] = p
		delete(m.noMapper, k)
	}
	m.mu.Unlock()
	if old != nil {
		old.close()
	}
	// Devices that changed since the store was read are queued by
	// Changed; the ones waiting for this mapper get it now.
	for _, d := range held {
		if protocolOf(d.Device) == mp.info.protocol {
			m.queue.Add(keyOf(d.Device))
		}
	}
	slices.SortFunc(devices, func(a, b *dmiv1beta1.Device) int {
		return strings.Compare(a.GetNamespace()+"/"+a.GetName(), b.GetNamespace()+"/"+b.GetName())
	})
	return devices, models, nil
}

func keyOf(d *edgesyncv1.Device) edgeclient.Key {
	return edgeclient.Key{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: d.GetMetadata().GetNamespace(), Name: d.GetMetadata().GetName()}
}

// modelKey names a model; Kind is unspecified since models are not held
// on their own.
func modelKey(namespace, name string) edgeclient.Key {
	return edgeclient.Key{Namespace: namespace, Name: name}
}
