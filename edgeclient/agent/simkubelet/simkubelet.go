// Package simkubelet is the reference agent's kubelet API for its simulated
// runtime: the http.Handler an edgeclient.Client serves tunneled requests
// with (Config.TunnelHandler), so that kubectl logs, exec, attach and
// port-forward reach pods on the edge. Exec, attach and port-forward use
// the Kubernetes streaming libraries (k8s.io/kubelet/pkg/cri/streaming),
// which speak SPDY and WebSocket as a kubelet does.
//
// What a simulated container does:
//
//   - Logs: it writes a line when it starts (container, pod, image, node),
//     one per environment variable and per file of its volumes (names and
//     sizes: secret values are never written), and then one line a second
//     while it runs; follow streams the new ones.
//   - Exec (only with Config.AllowExec): the command runs on the edge host,
//     with the container's environment (env and envFrom resolved from the
//     configmaps and secrets the node holds, and the host's PATH), in the
//     pod's directory, where the runtime writes its volumes (Config.Volumes);
//     an argument that names a path under one of the container's mount
//     paths is rewritten to the file in that volume's directory, so `cat
//     /etc/web/greeting` prints the configmap's value. A TTY is a
//     pseudo-terminal.
//   - Attach: the container's output as it is written, and what is typed to
//     it echoed back.
//   - Port-forward: only to a port one of the pod's containers declares
//     (spec.containers[].ports, TCP), which it connects to on the edge
//     host's loopback; any other port is refused with an error naming the
//     ports the pod declares (kubectl port-forward prints it). A simulated
//     pod has no network of its own, so without this rule a port-forward
//     would reach every service listening on the host's loopback.
package simkubelet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/creack/pty"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"
	remotecommandserver "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// Streaming timeouts, the kubelet's defaults.
const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = remotecommandconsts.DefaultStreamCreationTimeout
	// maxTicks bounds the "running" lines a log holds: a container keeps
	// its last maxTicks seconds.
	maxTicks = 3600
)

// Objects is what the node holds (an edgeclient.Client).
type Objects interface {
	Pod(namespace, name string) (*corev1.Pod, error)
	ConfigMap(namespace, name string) (*corev1.ConfigMap, error)
	Secret(namespace, name string) (*corev1.Secret, error)
}

// Volumes are where the runtime wrote each pod's volumes (a
// *volumes.Dir).
type Volumes interface {
	// PodDir is the directory of the pod with uid.
	PodDir(uid string) string
	// VolumeDir is the directory of one volume of the pod with uid.
	VolumeDir(uid, volume string) string
}

// Config configures a Handler.
type Config struct {
	// Node is the node's name, written in the logs.
	Node string
	// Objects gives the pods, configmaps and secrets the node holds.
	Objects Objects
	// AllowExec lets exec and /run run commands on the edge host. Off,
	// they are refused.
	AllowExec bool
	// Volumes are the pods' volume directories (package
	// edgeclient/volumes); required for exec.
	Volumes Volumes
	// Logger receives the handler's logs. Default: none.
	Logger *zap.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Handler serves the kubelet API paths of tunnel.proto.
type Handler struct {
	cfg Config
	log *zap.Logger
	mux *http.ServeMux
}

// New returns a handler.
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", h.logs)
	for _, p := range []string{"/exec/{ns}/{pod}/{container}", "/exec/{ns}/{pod}/{uid}/{container}"} {
		h.mux.HandleFunc(p, h.exec)
	}
	for _, p := range []string{"/attach/{ns}/{pod}/{container}", "/attach/{ns}/{pod}/{uid}/{container}"} {
		h.mux.HandleFunc(p, h.attach)
	}
	for _, p := range []string{"/portForward/{ns}/{pod}", "/portForward/{ns}/{pod}/{uid}"} {
		h.mux.HandleFunc(p, h.portForward)
	}
	for _, p := range []string{"POST /run/{ns}/{pod}/{container}", "POST /run/{ns}/{pod}/{uid}/{container}"} {
		h.mux.HandleFunc(p, h.run)
	}
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// container finds the pod and container a request names, or answers the
// error and returns nil.
func (h *Handler) container(w http.ResponseWriter, r *http.Request) (*corev1.Pod, *corev1.Container) {
	pod := h.pod(w, r)
	if pod == nil {
		return nil, nil
	}
	name := r.PathValue("container")
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return pod, &pod.Spec.Containers[i]
		}
	}
	writeError(w, r, fmt.Sprintf("container %q not found in pod %s/%s", name, pod.Namespace, pod.Name), http.StatusNotFound)
	return nil, nil
}

func (h *Handler) pod(w http.ResponseWriter, r *http.Request) *corev1.Pod {
	ns, name := r.PathValue("ns"), r.PathValue("pod")
	pod, err := h.cfg.Objects.Pod(ns, name)
	if err != nil {
		writeError(w, r, fmt.Sprintf("read pod %s/%s: %v", ns, name, err), http.StatusInternalServerError)
		return nil
	}
	if pod == nil {
		writeError(w, r, fmt.Sprintf("pod %s/%s is not on node %s", ns, name, h.cfg.Node), http.StatusNotFound)
		return nil
	}
	if uid := r.PathValue("uid"); uid != "" && uid != string(pod.UID) {
		writeError(w, r, fmt.Sprintf("pod %s/%s with uid %s is not on node %s", ns, name, uid, h.cfg.Node), http.StatusNotFound)
		return nil
	}
	return pod
}

// logLine is one line a simulated container wrote.
type logLine struct {
	at   time.Time
	text string
}

// started is when the container started: its status says, else the pod's.
func started(pod *corev1.Pod, c *corev1.Container) time.Time {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == c.Name && cs.State.Running != nil {
			return cs.State.Running.StartedAt.Time
		}
	}
	if pod.Status.StartTime != nil {
		return pod.Status.StartTime.Time
	}
	return pod.CreationTimestamp.Time
}

// lines is the log of the container up to now.
func (h *Handler) lines(pod *corev1.Pod, c *corev1.Container, now time.Time) []logLine {
	start := started(pod, c)
	out := []logLine{{start, fmt.Sprintf("started container %s of pod %s/%s (image %s) on node %s", c.Name, pod.Namespace, pod.Name, c.Image, h.cfg.Node)}}
	env, sources := h.env(pod, c)
	for _, e := range env {
		switch src := sources[e.Name]; {
		case strings.HasPrefix(src, "secret"):
			out = append(out, logLine{start, fmt.Sprintf("env %s (from %s, %d bytes)", e.Name, src, len(e.Value))})
		default:
			out = append(out, logLine{start, fmt.Sprintf("env %s=%s", e.Name, e.Value)})
		}
	}
	for _, f := range h.files(pod, c) {
		out = append(out, logLine{start, fmt.Sprintf("file %s (%d bytes)", f.path, len(f.data))})
	}
	ticks := int(now.Sub(start) / time.Second)
	for i := max(1, ticks-maxTicks+1); i <= ticks; i++ {
		out = append(out, logLine{start.Add(time.Duration(i) * time.Second), tick(i)})
	}
	return out
}

func tick(i int) string { return fmt.Sprintf("running for %ds", i) }

// logs serves /containerLogs with the kubelet's parameters.
func (h *Handler) logs(w http.ResponseWriter, r *http.Request) {
	pod, c := h.container(w, r)
	if c == nil {
		return
	}
	q := r.URL.Query()
	if q.Get("previous") == "true" {
		writeError(w, r, fmt.Sprintf("previous terminated container %q in pod %q not found", c.Name, pod.Name), http.StatusBadRequest)
		return
	}
	follow, timestamps := q.Get("follow") == "true", q.Get("timestamps") == "true"
	tail, limit := -1, int64(-1)
	var err error
	if v := q.Get("tailLines"); v != "" {
		if tail, err = strconv.Atoi(v); err != nil || tail < 0 {
			writeError(w, r, "tailLines must be a non-negative integer", http.StatusBadRequest)
			return
		}
	}
	if v := q.Get("limitBytes"); v != "" {
		if limit, err = strconv.ParseInt(v, 10, 64); err != nil || limit <= 0 {
			writeError(w, r, "limitBytes must be a positive integer", http.StatusBadRequest)
			return
		}
	}
	var since time.Time
	if v := q.Get("sinceSeconds"); v != "" {
		s, err := strconv.ParseInt(v, 10, 64)
		if err != nil || s <= 0 {
			writeError(w, r, "sinceSeconds must be a positive integer", http.StatusBadRequest)
			return
		}
		since = h.cfg.Now().Add(-time.Duration(s) * time.Second)
	}
	if v := q.Get("sinceTime"); v != "" {
		if since, err = time.Parse(time.RFC3339, v); err != nil {
			writeError(w, r, "sinceTime must be an RFC 3339 time", http.StatusBadRequest)
			return
		}
	}

	now := h.cfg.Now()
	all := h.lines(pod, c, now)
	all = slices.DeleteFunc(all, func(l logLine) bool { return l.at.Before(since) })
	if tail >= 0 && tail < len(all) {
		all = all[len(all)-tail:]
	}
	w.Header().Set("Content-Type", "text/plain")
	out := &limitWriter{w: w, left: limit}
	write := func(l logLine) error {
		text := l.text + "\n"
		if timestamps {
			text = l.at.UTC().Format(time.RFC3339Nano) + " " + text
		}
		_, err := io.WriteString(out, text)
		return err
	}
	for _, l := range all {
		if write(l) != nil {
			return
		}
	}
	if !follow {
		return
	}
	flusher, _ := w.(http.Flusher)
	start := started(pod, c)
	next := int(now.Sub(start)/time.Second) + 1
	for {
		if flusher != nil {
			flusher.Flush()
		}
		at := start.Add(time.Duration(next) * time.Second)
		timer := time.NewTimer(time.Until(at))
		select {
		case <-r.Context().Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if write(logLine{at, tick(next)}) != nil {
			return
		}
		next++
	}
}

// limitWriter writes at most left bytes (all when left < 0), then fails.
type limitWriter struct {
	w    io.Writer
	left int64
}

var errLimit = errors.New("limitBytes reached")

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.left < 0 {
		return l.w.Write(p)
	}
	if l.left == 0 {
		return 0, errLimit
	}
	if int64(len(p)) > l.left {
		n, _ := l.w.Write(p[:l.left])
		l.left = 0
		return n, errLimit
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}

// exec serves /exec with the streaming library.
func (h *Handler) exec(w http.ResponseWriter, r *http.Request) {
	pod, c := h.container(w, r)
	if c == nil {
		return
	}
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		writeError(w, r, err.Error(), http.StatusBadRequest)
		return
	}
	if !h.cfg.AllowExec {
		writeError(w, r, fmt.Sprintf("exec is disabled on edge node %s: its edgesync-agent runs without --allow-exec", h.cfg.Node), http.StatusForbidden)
		return
	}
	cmd := r.URL.Query()[corev1.ExecCommandParam]
	remotecommandserver.ServeExec(w, r, &container{h: h, pod: pod, c: c}, pod.Name, pod.UID, c.Name, cmd, opts,
		streamIdleTimeout, streamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

// attach serves /attach with the streaming library.
func (h *Handler) attach(w http.ResponseWriter, r *http.Request) {
	pod, c := h.container(w, r)
	if c == nil {
		return
	}
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		writeError(w, r, err.Error(), http.StatusBadRequest)
		return
	}
	remotecommandserver.ServeAttach(w, r, &container{h: h, pod: pod, c: c}, pod.Name, pod.UID, c.Name, opts,
		streamIdleTimeout, streamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

// portForward serves /portForward with the streaming library, forwarding
// only to the ports the pod declares.
func (h *Handler) portForward(w http.ResponseWriter, r *http.Request) {
	pod := h.pod(w, r)
	if pod == nil {
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		writeError(w, r, err.Error(), http.StatusBadRequest)
		return
	}
	fw := declared{pod: pod, ports: declaredPorts(pod)}
	// A WebSocket request names its ports up front: refuse before
	// upgrading. SPDY names each port on its own stream (fw.PortForward).
	for _, p := range opts.Ports {
		if err := fw.allow(p); err != nil {
			writeError(w, r, err.Error(), http.StatusForbidden)
			return
		}
	}
	portforward.ServePortForward(w, r, fw, pod.Name, pod.UID, opts,
		streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// declaredPorts are the TCP ports the pod's containers (and sidecar init
// containers, which run beside them) declare, sorted.
func declaredPorts(pod *corev1.Pod) []int32 {
	var out []int32
	add := func(cs []corev1.Container) {
		for _, c := range cs {
			for _, p := range c.Ports {
				if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
					out = append(out, p.ContainerPort)
				}
			}
		}
	}
	add(pod.Spec.Containers)
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			add([]corev1.Container{c})
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// declared forwards to the edge host's loopback, only to the ports its pod
// declares.
type declared struct {
	pod   *corev1.Pod
	ports []int32
}

// allow refuses a port the pod does not declare, saying which it does.
func (d declared) allow(port int32) error {
	if _, ok := slices.BinarySearch(d.ports, port); ok {
		return nil
	}
	has := "declares no ports"
	if len(d.ports) > 0 {
		s := make([]string, len(d.ports))
		for i, p := range d.ports {
			s[i] = strconv.Itoa(int(p))
		}
		has = "declares " + strings.Join(s, ", ")
	}
	return fmt.Errorf("port %d is not a port of pod %s/%s (it %s): port-forward reaches only the ports its containers declare",
		port, d.pod.Namespace, d.pod.Name, has)
}

func (d declared) PortForward(ctx context.Context, _ string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	if err := d.allow(port); err != nil {
		return err
	}
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("connect to port %d on the edge host's loopback: %w", port, err)
	}
	defer conn.Close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		close(done)
	}()
	_, _ = io.Copy(stream, conn)
	stream.Close()
	<-done
	return nil
}

// run serves /run: the command's combined output.
func (h *Handler) run(w http.ResponseWriter, r *http.Request) {
	pod, c := h.container(w, r)
	if c == nil {
		return
	}
	if !h.cfg.AllowExec {
		writeError(w, r, fmt.Sprintf("exec is disabled on edge node %s: its edgesync-agent runs without --allow-exec", h.cfg.Node), http.StatusForbidden)
		return
	}
	cmd := strings.Fields(r.URL.Query().Get("cmd"))
	if len(cmd) == 0 {
		writeError(w, r, "cmd is required", http.StatusBadRequest)
		return
	}
	var out bytes.Buffer
	ctr := &container{h: h, pod: pod, c: c}
	if err := ctr.ExecInContainer(r.Context(), pod.Name, pod.UID, c.Name, cmd, nil, nopCloser{&out}, nopCloser{&out}, false, nil, 0); err != nil {
		var exitErr utilexec.ExitError
		if !errors.As(err, &exitErr) {
			writeError(w, r, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	_, _ = w.Write(out.Bytes())
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// container is one simulated container, the streaming library's Executor
// and Attacher.
type container struct {
	h   *Handler
	pod *corev1.Pod
	c   *corev1.Container
}

// ExecInContainer runs cmd on the edge host as the container would see it
// (package comment).
func (ct *container) ExecInContainer(ctx context.Context, _ string, _ types.UID, _ string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) error {
	if len(cmd) == 0 {
		return errors.New("no command given")
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	vols := ct.h.cfg.Volumes
	if vols == nil {
		return errors.New("this agent keeps no pod volumes on disk (an in-memory store), so it cannot run commands")
	}
	uid := string(ct.pod.UID)
	root := vols.PodDir(uid)
	if err := os.MkdirAll(root, 0o755); err != nil { // a pod without volumes has none yet
		return fmt.Errorf("pod directory: %w", err)
	}
	args := make([]string, len(cmd))
	for i, a := range cmd {
		args[i] = hostPath(vols, uid, ct.c, a)
	}
	command := exec.CommandContext(ctx, args[0], args[1:]...)
	command.Dir = root
	env, _ := ct.h.env(ct.pod, ct.c)
	command.Env = []string{"PATH=" + os.Getenv("PATH"), "HOSTNAME=" + ct.pod.Name, "HOME=" + root}
	for _, e := range env {
		command.Env = append(command.Env, e.Name+"="+e.Value)
	}
	var err error
	if tty {
		err = runTTY(command, in, out, resize)
	} else {
		command.Stdin, command.Stdout = in, writerOrDiscard(out)
		command.Stderr = writerOrDiscard(errw)
		err = command.Run()
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return utilexec.CodeExitError{Err: err, Code: exitErr.ExitCode()}
	}
	return err
}

func writerOrDiscard(w io.WriteCloser) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// runTTY runs command on a pseudo-terminal.
func runTTY(command *exec.Cmd, in io.Reader, out io.Writer, resize <-chan remotecommand.TerminalSize) error {
	f, err := pty.Start(command)
	if err != nil {
		return fmt.Errorf("start command on a terminal: %w", err)
	}
	defer f.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case size, ok := <-resize:
				if !ok {
					return
				}
				_ = pty.Setsize(f, &pty.Winsize{Rows: size.Height, Cols: size.Width})
			case <-done:
				return
			}
		}
	}()
	if in != nil {
		go func() { _, _ = io.Copy(f, in) }() // ends when f closes
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(writerOrDiscard(nopWriteCloser(out)), f) // EIO once the command exits
	}()
	err = command.Wait()
	<-copied
	return err
}

func nopWriteCloser(w io.Writer) io.WriteCloser {
	if w == nil {
		return nil
	}
	return nopCloser{w}
}

// AttachContainer streams what the container writes from now on, and
// echoes what is typed to it.
func (ct *container) AttachContainer(ctx context.Context, _ string, _ types.UID, _ string, in io.Reader, out, _ io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize) error {
	if out == nil {
		out = nopCloser{io.Discard}
	}
	lines := make(chan string)
	if in != nil {
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := in.Read(buf)
				if n > 0 {
					select {
					case lines <- "stdin: " + strings.TrimRight(string(buf[:n]), "\r\n"):
					case <-ctx.Done():
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
	start := started(ct.pod, ct.c)
	next := int(ct.h.cfg.Now().Sub(start)/time.Second) + 1
	for {
		timer := time.NewTimer(time.Until(start.Add(time.Duration(next) * time.Second)))
		var text string
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case text = <-lines:
			timer.Stop()
		case <-timer.C:
			text = tick(next)
			next++
		}
		if _, err := io.WriteString(out, text+"\n"); err != nil {
			return nil
		}
	}
}

// env resolves the container's environment from what the node holds, and
// names where each variable came from ("secret NAME" for secrets).
func (h *Handler) env(pod *corev1.Pod, c *corev1.Container) ([]corev1.EnvVar, map[string]string) {
	var out []corev1.EnvVar
	src := map[string]string{}
	set := func(name, value, from string) {
		out = slices.DeleteFunc(out, func(e corev1.EnvVar) bool { return e.Name == name })
		out = append(out, corev1.EnvVar{Name: name, Value: value})
		src[name] = from
	}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			if cm, _ := h.cfg.Objects.ConfigMap(pod.Namespace, ef.ConfigMapRef.Name); cm != nil {
				for _, k := range sortedKeys(cm.Data) {
					set(ef.Prefix+k, cm.Data[k], "configmap "+cm.Name)
				}
			}
		case ef.SecretRef != nil:
			if s, _ := h.cfg.Objects.Secret(pod.Namespace, ef.SecretRef.Name); s != nil {
				for _, k := range sortedKeys(s.Data) {
					set(ef.Prefix+k, string(s.Data[k]), "secret "+s.Name)
				}
			}
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			set(e.Name, e.Value, "")
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			if cm, _ := h.cfg.Objects.ConfigMap(pod.Namespace, ref.Name); cm != nil {
				set(e.Name, cm.Data[ref.Key], "configmap "+ref.Name)
			}
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if s, _ := h.cfg.Objects.Secret(pod.Namespace, ref.Name); s != nil {
				set(e.Name, string(s.Data[ref.Key]), "secret "+ref.Name)
			}
		case e.ValueFrom.FieldRef != nil:
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				set(e.Name, pod.Name, "")
			case "metadata.namespace":
				set(e.Name, pod.Namespace, "")
			case "spec.nodeName":
				set(e.Name, pod.Spec.NodeName, "")
			}
		}
	}
	return out, src
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// file is one file of a container's volumes, at its path in the container.
type file struct {
	path string
	data []byte
}

// files lists the files of the container's configMap, secret and
// projected volumes, at their paths in the container.
func (h *Handler) files(pod *corev1.Pod, c *corev1.Container) []file {
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	var out []file
	addCM := func(mount, name string, items []corev1.KeyToPath) {
		cm, _ := h.cfg.Objects.ConfigMap(pod.Namespace, name)
		if cm == nil {
			return
		}
		data := map[string][]byte{}
		for k, v := range cm.Data {
			data[k] = []byte(v)
		}
		maps(mount, data, items, &out)
	}
	addSecret := func(mount, name string, items []corev1.KeyToPath) {
		s, _ := h.cfg.Objects.Secret(pod.Namespace, name)
		if s == nil {
			return
		}
		maps(mount, s.Data, items, &out)
	}
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			continue
		}
		switch {
		case v.ConfigMap != nil:
			addCM(m.MountPath, v.ConfigMap.Name, v.ConfigMap.Items)
		case v.Secret != nil:
			addSecret(m.MountPath, v.Secret.SecretName, v.Secret.Items)
		case v.Projected != nil:
			for _, s := range v.Projected.Sources {
				switch {
				case s.ConfigMap != nil:
					addCM(m.MountPath, s.ConfigMap.Name, s.ConfigMap.Items)
				case s.Secret != nil:
					addSecret(m.MountPath, s.Secret.Name, s.Secret.Items)
				}
			}
		}
	}
	return out
}

// maps adds the keys of data (or the items chosen) as files under mount.
func maps(mount string, data map[string][]byte, items []corev1.KeyToPath, out *[]file) {
	if len(items) == 0 {
		for _, k := range sortedKeys(data) {
			*out = append(*out, file{path: path.Join(mount, k), data: data[k]})
		}
		return
	}
	for _, it := range items {
		if d, ok := data[it.Key]; ok {
			*out = append(*out, file{path: path.Join(mount, it.Path), data: d})
		}
	}
}

// hostPath rewrites arg to the file in a volume's directory when it names
// a path under one of the container's mount paths.
func hostPath(vols Volumes, uid string, c *corev1.Container, arg string) string {
	if !strings.HasPrefix(arg, "/") {
		return arg
	}
	clean := path.Clean(arg)
	for _, m := range c.VolumeMounts {
		mp := path.Clean(m.MountPath)
		if clean != mp && !strings.HasPrefix(clean, mp+"/") {
			continue
		}
		dir := vols.VolumeDir(uid, m.Name)
		if m.SubPath != "" {
			dir = filepath.Join(dir, filepath.FromSlash(path.Clean("/"+m.SubPath)))
		}
		return filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(clean, mp)))
	}
	return arg
}

// writeError answers an error the way the caller can show it: a JSON
// metav1.Status to requests that upgrade the connection (the apiserver's
// SPDY client decodes it and kubectl exec prints its message), plain text
// otherwise (kubectl logs prints the text).
func writeError(w http.ResponseWriter, r *http.Request, msg string, code int) {
	if !httpstream.IsUpgradeRequest(r) {
		http.Error(w, msg, code)
		return
	}
	body, _ := json.Marshal(&metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Code: int32(code), Message: msg,
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
