// Package agent is the reference edge agent's behaviour, shared by the
// edgesync-agent command and edge simulators: it runs an edgeclient.Client
// for a node, registers the node and reports its status, prints every
// change to what the node holds as one line (its own Node too: labels,
// taints and cordoning as kubectl set them), and runs pods with a
// simulated runtime: each pod it receives is reported Running and Ready, and
// terminated once the cloud deletes it, and its volumes (ConfigMaps,
// Secrets, ServiceAccount tokens, CA and namespace) are written as files
// under <store>/pods/<uid> (see package volumes); each device reports online with its
// desired values. What the runtime does is reported as Kubernetes Events
// (the node starting; containers pulled, created, started, killed;
// devices online or offline). With DevicesConfig.Mode "dmi" devices are
// driven by KubeEdge mappers instead (package dmi). With Config.Runtime
// RuntimeKubelet it runs no pods itself: the node's stock kubelet does,
// against the agent's local API (package localapi), and kubectl logs, exec,
// attach and port-forward reach the kubelet's server through the agent
// (package kubeletproxy); see kubeletruntime.go. It serves the Services the node holds to the node's
// applications when asked (ServicesConfig): a DNS server (package
// servicedns) and an L4 proxy (package serviceproxy), both from the store,
// so they keep working offline. Real container runtimes and device
// protocols are out of scope.
package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/dmi"
	"github.com/edgesync/edgesync/edgeclient/router"
	"github.com/edgesync/edgesync/edgeclient/serviceproxy"
	"github.com/edgesync/edgesync/edgeclient/volumes"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// DefaultStatusInterval is how often the node status is checked by default.
const DefaultStatusInterval = time.Minute

// Config configures an agent.
type Config struct {
	// Client configures the connection and the store; its OnEvent and
	// AgentVersion are set by the agent.
	Client edgeclient.Config
	// Version is the agent's version, shown to operators.
	Version string
	// Labels are the labels of the Node when it is registered.
	Labels map[string]string
	// StatusInterval is how often the node status is checked; it is sent
	// only when it changed. Default DefaultStatusInterval.
	StatusInterval time.Duration
	// Out receives one line per event; nil prints nothing (simulators).
	Out io.Writer
	// AllowExec lets kubectl exec run commands on the edge host (with the
	// pod's environment and volume files; package simkubelet). Off, exec
	// is refused.
	AllowExec bool
	// OnClient, when set, is called with the client once it exists (for
	// example to show its State).
	OnClient func(*edgeclient.Client)
	// Services configures the DNS server and the proxy for the Services
	// the node holds; both are off by default.
	Services ServicesConfig
	// Devices says what drives the devices the node holds: simulated
	// (the default) or KubeEdge mappers over DMI.
	Devices DevicesConfig
	// Runtime is what runs the node's pods: RuntimeSimulated (the
	// default) or RuntimeKubelet.
	Runtime string
	// Kubelet configures RuntimeKubelet.
	Kubelet KubeletConfig
	// MQTTBroker, when set, turns on KubeEdge's router at the edge
	// (package edgeclient/router): Rules' messages are published on this
	// MQTT broker (tcp://host:port) and sent to local HTTP applications,
	// and what applications publish on the Rules' topics goes up.
	MQTTBroker string
}

// Device modes.
const (
	// DevicesSimulated: every device takes its desired values at once.
	DevicesSimulated = "simulated"
	// DevicesDMI: KubeEdge mappers drive the devices over DMI (package
	// dmi).
	DevicesDMI = "dmi"
)

// DevicesConfig says what drives the devices the node holds.
type DevicesConfig struct {
	// Mode is DevicesSimulated (when empty) or DevicesDMI.
	Mode string
	// DMI configures the DMI server in DevicesDMI mode; its Node,
	// NodeName and Logger are set by the agent.
	DMI dmi.Config
}

// agent runs pods with a simulated runtime: every pod is Running and Ready
// as soon as it arrives.
type agent struct {
	node    string
	version string
	client  *edgeclient.Client
	log     *zap.Logger
	started metav1.Time // the node's Ready transition time

	outMu sync.Mutex // guards out
	out   io.Writer  // nil: print nothing

	// applied holds, per device, the desired values last reported as
	// applied; only OnEvent (one goroutine) and startup touch it.
	applied map[edgeclient.Key]string
	// proxy carries connections to the held Services; nil when off.
	proxy *serviceproxy.Proxy
	// volumes holds the pods' volume files; nil without a store directory
	// or with the kubelet runtime (the kubelet mounts them).
	volumes *volumes.Dir
	// kubelet is the kubelet runtime; nil with the simulated one.
	kubelet *kubeletRuntime
	// dmi drives the devices in DevicesDMI mode; nil when simulated.
	dmi *dmi.Manager
	// routes carries KubeEdge Rules' messages at the edge (--mqtt-broker); nil
	// when off.
	routes *router.Router
}

// nodeLabels are the labels a kubelet gives its Node (hostname, OS and
// architecture, which schedulers and topology spreading use), overridden
// and extended by the configured ones.
func nodeLabels(node string, configured map[string]string) map[string]string {
	labels := map[string]string{
		corev1.LabelHostname:   node,
		corev1.LabelOSStable:   runtime.GOOS,
		corev1.LabelArchStable: runtime.GOARCH,
	}
	maps.Copy(labels, configured)
	return labels
}

// Run runs the agent until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = DefaultStatusInterval
	}
	log := cfg.Client.Logger
	if log == nil {
		log = zap.NewNop()
	}
	a := &agent{node: cfg.Client.NodeName, version: cfg.Version, log: log, out: cfg.Out, started: metav1.Now(), applied: map[edgeclient.Key]string{}}
	ccfg := cfg.Client
	ccfg.AgentVersion = "edgesync-agent/" + cfg.Version
	ccfg.OnEvent = a.onEvent
	switch cfg.Runtime {
	case "", RuntimeSimulated:
		a.volumes = newVolumes(cfg.Client.StoreDir)
		ccfg.TunnelHandler = a.kubeletHandler(cfg)
	case RuntimeKubelet:
		kr, err := newKubeletRuntime(cfg.Kubelet, cfg.Client.NodeName, log)
		if err != nil {
			return err
		}
		defer kr.close()
		a.kubelet = kr
		ccfg.TunnelHandler = kr.handler()
		// The kubelet's liveness is the node's: the client's own
		// heartbeats stop when the kubelet stops renewing its Lease.
		ccfg.HeartbeatWhile = kr.kubeletAlive
	default:
		return fmt.Errorf("unknown runtime %q: want %q or %q", cfg.Runtime, RuntimeSimulated, RuntimeKubelet)
	}
	if cfg.MQTTBroker != "" {
		a.routes = router.New(router.Config{Broker: cfg.MQTTBroker, ClientID: "edgesync-" + a.node, Logger: log.Named("router")})
		ccfg.Router = a.routes
	}
	c, err := edgeclient.New(ccfg)
	if err != nil {
		return err
	}
	defer c.Close()
	a.client = c
	if a.kubelet != nil {
		if err := a.kubelet.attach(c, log); err != nil {
			return err
		}
	}
	switch cfg.Devices.Mode {
	case "", DevicesSimulated:
	case DevicesDMI:
		dcfg := cfg.Devices.DMI
		dcfg.Node, dcfg.NodeName, dcfg.Logger = c, a.node, log
		if a.dmi, err = dmi.New(dcfg); err != nil {
			return err
		}
	default:
		return fmt.Errorf("devices mode %q: want %q or %q", cfg.Devices.Mode, DevicesSimulated, DevicesDMI)
	}
	if cfg.OnClient != nil {
		cfg.OnClient(c)
	}

	// Offline autonomy: serve what the store holds before any connection.
	held, err := c.List(edgesyncv1.Kind_KIND_UNSPECIFIED)
	if err != nil {
		return fmt.Errorf("read store: %w", err)
	}
	for _, obj := range held {
		a.print("HELD", obj, nil)
		if obj.Pod != nil && a.kubelet == nil {
			a.syncVolumes(obj.Pod)
			a.reportPod(obj.Pod)
		}
		if obj.Device != nil && a.dmi == nil {
			a.reportDevice(obj.Device)
		}
	}
	if a.kubelet != nil {
		return a.runWithKubelet(ctx, cfg, c)
	}
	registration, err := c.RegisterNode(edgeclient.NodeRegistration{Labels: nodeLabels(a.node, cfg.Labels), Status: *a.nodeStatus()})
	if err != nil {
		return err
	}
	a.reportEvent(edgeclient.EventReport{Regarding: edgeclient.Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: a.node},
		Reason: "Starting", Note: "Starting edgesync-agent " + a.version})
	log.Info("agent started", zap.String("node", a.node), zap.Int("held_objects", len(held)), zap.String("server", ccfg.Server), zap.Strings("servers", ccfg.Servers))

	g, ctx := errgroup.WithContext(ctx)
	if err := a.startServices(ctx, g, cfg.Services, c); err != nil {
		return err
	}
	g.Go(func() error { return c.Run(ctx) })
	if a.routes != nil {
		g.Go(func() error { return a.routes.Run(ctx, c) })
	}
	if a.dmi != nil {
		g.Go(func() error { return a.dmi.Run(ctx) })
	}
	g.Go(func() error {
		// A node status is refused until the Node exists: report it once
		// the registration is answered (possibly after a reconnect).
		if _, err := registration.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("node registration failed; reporting node status anyway", zap.Error(err))
		}
		if _, err := c.ReportNodeStatus(a.nodeStatus()); err != nil {
			return err
		}
		t := time.NewTicker(cfg.StatusInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				if _, err := c.ReportNodeStatus(a.nodeStatus()); err != nil {
					return err
				}
			}
		}
	})
	return g.Wait()
}

func (a *agent) onEvent(_ context.Context, ev edgeclient.Event) error {
	a.print(ev.Type.String(), ev.Object, ev.Old)
	if a.kubelet != nil {
		a.kubelet.onEvent(ev)
		a.servicesChanged(ev.Key)
		if a.dmi != nil {
			a.dmi.Changed(ev)
		}
		switch {
		case ev.Type == edgeclient.Deleted:
			delete(a.applied, ev.Key)
		case ev.Object.Device != nil && a.dmi == nil:
			a.reportDevice(ev.Object.Device)
		}
		return nil
	}
	a.reportRuntimeEvents(ev)
	a.servicesChanged(ev.Key)
	if a.dmi != nil {
		a.dmi.Changed(ev)
	}
	switch {
	case ev.Type == edgeclient.Deleted:
		delete(a.applied, ev.Key)
		if ev.Key.Kind == edgesyncv1.Kind_KIND_POD {
			a.removeVolumes(ev.UID)
		} else {
			a.syncAllVolumes(ev.Key.Namespace)
		}
	case ev.Object.Pod != nil:
		a.syncVolumes(ev.Object.Pod)
		a.reportPod(ev.Object.Pod)
	case ev.Object.ConfigMap != nil, ev.Object.Secret != nil, ev.Object.Token != nil:
		a.syncAllVolumes(ev.Key.Namespace)
	case ev.Object.Device != nil && a.dmi == nil:
		a.reportDevice(ev.Object.Device)
	}
	return nil
}

// reportDevice simulates a device that takes every desired value: it
// reports the device online with each property's reported value equal to
// its desired one. It reports only when the desired values changed, since
// the cloud writing the status sends the device again.
func (a *agent) reportDevice(d *edgeclient.Device) {
	meta := d.Device.GetMetadata()
	key := edgeclient.Key{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: meta.GetNamespace(), Name: meta.GetName()}
	st := DeviceStatus(d, time.Now())
	var fp strings.Builder
	for _, tw := range st.GetTwins() {
		fmt.Fprintf(&fp, "%q=%q;", tw.GetPropertyName(), tw.GetObservedDesired().GetValue())
	}
	if a.applied[key] == fp.String() {
		return
	}
	if _, err := a.client.ReportDeviceStatus(st); err != nil {
		a.log.Warn("cannot report device status", zap.Stringer("device", key), zap.Error(err))
		return
	}
	a.applied[key] = fp.String()
}

// DeviceStatus is the simulated status of device d at now: online, every
// property reporting its desired value.
func DeviceStatus(d *edgeclient.Device, now time.Time) *edgesyncv1.DeviceStatus {
	meta := d.Device.GetMetadata()
	st := &edgesyncv1.DeviceStatus{
		Namespace: meta.GetNamespace(), Name: meta.GetName(), State: "online",
		LastOnlineTime: timestamppb.New(now.Truncate(time.Second)),
	}
	for _, p := range d.Device.GetProperties() {
		desired := p.GetDesired().GetValue()
		st.Twins = append(st.Twins, &edgesyncv1.Twin{
			PropertyName:    p.GetName(),
			Reported:        &edgesyncv1.TwinValue{Value: desired, Metadata: map[string]string{"timestamp": strconv.FormatInt(now.UnixMilli(), 10)}},
			ObservedDesired: &edgesyncv1.TwinValue{Value: desired},
		})
	}
	return st
}

// reportPod reports the simulated runtime's status of pod. Results are
// not awaited: the client logs refusals and resends unanswered reports.
func (a *agent) reportPod(pod *corev1.Pod) {
	st := PodStatus(pod, time.Now())
	withPodIP(st)
	if equality.Semantic.DeepEqual(st, &pod.Status) {
		return // the cloud already has it
	}
	if _, err := a.client.ReportPodStatus(pod.Namespace, pod.Name, string(pod.UID), st); err != nil {
		a.log.Warn("cannot report pod status", zap.String("pod", pod.Namespace+"/"+pod.Name), zap.Error(err))
	}
}

// print writes one line: time, event, kind, namespace/name, version and
// what changed.
func (a *agent) print(what string, obj edgeclient.Object, old *edgeclient.Object) {
	if a.out == nil {
		return
	}
	kind, meta := kindMeta(obj)
	name := meta.Name // cluster-scoped (the Node)
	if meta.Namespace != "" {
		name = meta.Namespace + "/" + meta.Name
	}
	line := fmt.Sprintf("%s %-8s %-9s %s rv=%s", time.Now().UTC().Format(time.RFC3339), what, kind, name, meta.ResourceVersion)
	if d := Describe(obj, old); d != "" {
		line += " " + d
	}
	a.outMu.Lock()
	defer a.outMu.Unlock()
	fmt.Fprintln(a.out, line)
}

func kindMeta(obj edgeclient.Object) (string, metav1.ObjectMeta) {
	switch {
	case obj.Pod != nil:
		return "Pod", obj.Pod.ObjectMeta
	case obj.ConfigMap != nil:
		return "ConfigMap", obj.ConfigMap.ObjectMeta
	case obj.Secret != nil:
		return "Secret", obj.Secret.ObjectMeta
	case obj.Device != nil:
		m := obj.Device.Device.GetMetadata()
		return "Device", metav1.ObjectMeta{Namespace: m.GetNamespace(), Name: m.GetName(), ResourceVersion: m.GetResourceVersion()}
	case obj.Node != nil:
		return "Node", obj.Node.ObjectMeta
	case obj.Service != nil:
		return "Service", obj.Service.ObjectMeta
	case obj.EndpointSlice != nil:
		return "EndpointSlice", obj.EndpointSlice.ObjectMeta
	case obj.Token != nil:
		m := obj.Token.GetMetadata()
		return "Token", metav1.ObjectMeta{Namespace: m.GetNamespace(), Name: m.GetName(), ResourceVersion: m.GetResourceVersion()}
	}
	return "?", metav1.ObjectMeta{}
}

// Describe says in a few words what an object is (old == nil) or what
// changed since old. Secret values are never shown.
func Describe(obj edgeclient.Object, old *edgeclient.Object) string {
	var parts []string
	switch {
	case obj.Pod != nil:
		p := obj.Pod
		if old == nil || old.Pod == nil {
			parts = append(parts, "images="+strings.Join(images(p), ","))
			if p.DeletionTimestamp != nil {
				parts = append(parts, "terminating")
			}
			break
		}
		o := old.Pod
		if a, b := strings.Join(images(o), ","), strings.Join(images(p), ","); a != b {
			parts = append(parts, "images "+a+" -> "+b)
		}
		if p.DeletionTimestamp != nil && o.DeletionTimestamp == nil {
			parts = append(parts, "terminating")
		}
		if !equality.Semantic.DeepEqual(o.Labels, p.Labels) {
			parts = append(parts, "labels changed")
		}
		if !equality.Semantic.DeepEqual(o.Annotations, p.Annotations) {
			parts = append(parts, "annotations changed")
		}
		if !equality.Semantic.DeepEqual(o.Spec, p.Spec) && len(parts) == 0 {
			parts = append(parts, "spec changed")
		}
	case obj.ConfigMap != nil:
		var before map[string]string
		if old != nil && old.ConfigMap != nil {
			before = old.ConfigMap.Data
		}
		parts = append(parts, keyChanges(before, obj.ConfigMap.Data, old != nil, func(a, b string) bool { return a == b }))
	case obj.Secret != nil:
		var before map[string][]byte
		if old != nil && old.Secret != nil {
			before = old.Secret.Data
		}
		// Only key names: never print secret values.
		parts = append(parts, keyChanges(before, obj.Secret.Data, old != nil, func(a, b []byte) bool { return string(a) == string(b) }))
	case obj.Node != nil:
		parts = describeNode(obj.Node, old)
	case obj.Service != nil:
		parts = describeService(obj.Service)
	case obj.EndpointSlice != nil:
		parts = describeSlice(obj.EndpointSlice)
	case obj.Token != nil:
		// Where the pod mounts it and until when: never the token.
		tok := obj.Token
		audience := tok.GetAudience()
		if audience == "" {
			audience = "(api server)"
		}
		parts = append(parts, "serviceAccount="+tok.GetServiceAccountName(), "audience="+audience,
			"expires="+tok.GetExpirationTime().AsTime().UTC().Format(time.RFC3339))
	case obj.Device != nil:
		d := obj.Device.Device
		if old == nil || old.Device == nil {
			parts = append(parts, "model="+d.GetModelName(), "properties="+strconv.Itoa(len(d.GetProperties())))
			break
		}
		desired := map[string]string{}
		for _, p := range old.Device.Device.GetProperties() {
			desired[p.GetName()] = p.GetDesired().GetValue()
		}
		for _, p := range d.GetProperties() {
			if v := p.GetDesired().GetValue(); desired[p.GetName()] != v {
				parts = append(parts, fmt.Sprintf("%s: %q -> %q", p.GetName(), desired[p.GetName()], v))
			}
		}
	}
	return strings.Join(slices.DeleteFunc(parts, func(s string) bool { return s == "" }), " ")
}

// describeNode says what the cloud decided about the node: its labels,
// taints and whether it is cordoned, or how they changed since old.
func describeNode(n *corev1.Node, old *edgeclient.Object) []string {
	if old == nil || old.Node == nil {
		parts := []string{"labels=" + strconv.Itoa(len(n.Labels)), "taints=" + taints(n)}
		if n.Spec.Unschedulable {
			parts = append(parts, "cordoned")
		}
		return parts
	}
	o := old.Node
	var parts []string
	if l := labelChanges(o.Labels, n.Labels); l != "" {
		parts = append(parts, "labels "+l)
	}
	if !equality.Semantic.DeepEqual(o.Annotations, n.Annotations) {
		parts = append(parts, "annotations changed")
	}
	if a, b := taints(o), taints(n); a != b {
		parts = append(parts, "taints "+a+" -> "+b)
	}
	switch {
	case n.Spec.Unschedulable && !o.Spec.Unschedulable:
		parts = append(parts, "cordoned")
	case !n.Spec.Unschedulable && o.Spec.Unschedulable:
		parts = append(parts, "uncordoned")
	}
	if len(parts) == 0 && !equality.Semantic.DeepEqual(o.Spec, n.Spec) {
		parts = append(parts, "spec changed")
	}
	return parts
}

// taints lists a node's taints as kubectl writes them, or "none".
func taints(n *corev1.Node) string {
	if len(n.Spec.Taints) == 0 {
		return "none"
	}
	out := make([]string, 0, len(n.Spec.Taints))
	for _, t := range n.Spec.Taints {
		s := t.Key
		if t.Value != "" {
			s += "=" + t.Value
		}
		out = append(out, s+":"+string(t.Effect))
	}
	return strings.Join(out, ",")
}

// labelChanges lists how labels changed: +key=value, -key, ~key=value.
func labelChanges(before, after map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if b, ok := before[k]; !ok {
			out = append(out, "+"+k+"="+after[k])
		} else if b != after[k] {
			out = append(out, "~"+k+"="+after[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(before)) {
		if _, ok := after[k]; !ok {
			out = append(out, "-"+k)
		}
	}
	return strings.Join(out, " ")
}

func images(p *corev1.Pod) []string {
	var out []string
	for _, c := range p.Spec.Containers {
		out = append(out, c.Image)
	}
	return out
}

// keyChanges lists the keys of a data map, or with modified set how they
// changed: +added -removed ~changed.
func keyChanges[V any](before, after map[string]V, modified bool, equal func(a, b V) bool) string {
	if !modified {
		return "keys=" + strings.Join(slices.Sorted(maps.Keys(after)), ",")
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if b, ok := before[k]; !ok {
			out = append(out, "+"+k)
		} else if !equal(b, after[k]) {
			out = append(out, "~"+k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(before)) {
		if _, ok := after[k]; !ok {
			out = append(out, "-"+k)
		}
	}
	if len(out) == 0 {
		return ""
	}
	return "data " + strings.Join(out, " ")
}

// PodStatus is the simulated runtime's status of pod at now: every
// container running and ready, or, once the pod is being deleted, every
// container terminated and the pod Succeeded, so the cloud can remove it.
// Times already in the pod's status are kept, so reporting the same state
// twice reports the same status (and does not make the cloud write again).
func PodStatus(pod *corev1.Pod, now time.Time) *corev1.PodStatus {
	t := metav1.NewTime(now.Truncate(time.Second))
	st := pod.Status.DeepCopy()
	if st.StartTime == nil {
		st.StartTime = &t
	}
	start := *st.StartTime
	terminating := pod.DeletionTimestamp != nil
	ready := corev1.ConditionTrue
	st.Phase = corev1.PodRunning
	if terminating {
		ready, st.Phase = corev1.ConditionFalse, corev1.PodSucceeded
	}
	cond := func(typ corev1.PodConditionType, status corev1.ConditionStatus) corev1.PodCondition {
		c := corev1.PodCondition{Type: typ, Status: status, LastTransitionTime: t}
		if status == corev1.ConditionFalse {
			c.Reason = "PodCompleted"
		}
		for _, old := range pod.Status.Conditions {
			if old.Type == typ && old.Status == status {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		return c
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, corev1.ConditionTrue),
		cond(corev1.PodInitialized, corev1.ConditionTrue),
		cond(corev1.ContainersReady, ready),
		cond(corev1.PodReady, ready),
	}
	previous := map[string]corev1.ContainerState{}
	for _, cs := range pod.Status.ContainerStatuses {
		previous[cs.Name] = cs.State
	}
	started := !terminating
	st.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		cs := corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, Ready: !terminating, Started: &started,
			ContainerID: "sim://" + pod.Namespace + "/" + pod.Name + "/" + c.Name,
		}
		prev := previous[c.Name]
		startedAt := start
		if prev.Running != nil {
			startedAt = prev.Running.StartedAt
		}
		if prev.Terminated != nil {
			startedAt = prev.Terminated.StartedAt
		}
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: startedAt}
		if terminating {
			finished := t
			if prev.Terminated != nil {
				finished = prev.Terminated.FinishedAt
			}
			cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", StartedAt: startedAt, FinishedAt: finished, ContainerID: cs.ContainerID,
			}}
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	return st
}

// nodeStatus describes this machine as a Ready node.
func (a *agent) nodeStatus() *corev1.NodeStatus {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:  *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		corev1.ResourcePods: *resource.NewQuantity(110, resource.DecimalSI),
	}
	if mem := memTotal(); mem > 0 {
		capacity[corev1.ResourceMemory] = *resource.NewQuantity(mem, resource.BinarySI)
	}
	st := &corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity.DeepCopy(),
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue,
			Reason: "EdgeAgentReady", Message: "edgesync-agent is running",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: a.started,
		}},
		NodeInfo: corev1.NodeSystemInfo{
			OperatingSystem: runtime.GOOS, Architecture: runtime.GOARCH,
			KubeletVersion:          "v0.0.0-edgesync-agent-" + a.version,
			ContainerRuntimeVersion: "sim://" + a.version,
		},
	}
	st.Addresses = append(st.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: a.node})
	if ip := hostIP(); ip != "" {
		st.Addresses = append(st.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return st
}

// memTotal reads the machine's memory in bytes from /proc/meminfo (Linux),
// or 0.
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}

// hostIP returns the first non-loopback IPv4 address, or "".
func hostIP() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	return ""
}
