package simkubelet_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"

	"github.com/edgesync/edgesync/edgeclient/agent/simkubelet"
	"github.com/edgesync/edgesync/edgeclient/volumes"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// held is what the node holds: one pod using a configmap volume and a
// secret's keys as environment.
type held struct{}

var start = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func (held) Pod(ns, name string) (*corev1.Pod, error) {
	if ns != "ns" || name != "web" {
		return nil, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "uid-1"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "web", Image: "nginx:1.27",
				Env:          []corev1.EnvVar{{Name: "MODE", Value: "edge"}},
				EnvFrom:      []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}}}},
				VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/web"}},
			}},
			Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
				ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}}},
		},
		Status: corev1.PodStatus{StartTime: &metav1.Time{Time: start}},
	}, nil
}

func (held) ConfigMap(ns, name string) (*corev1.ConfigMap, error) {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string]string{"greeting": "hello"}}, nil
}

func (held) Secret(ns, name string) (*corev1.Secret, error) {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string][]byte{"password": []byte("s3cret")}}, nil
}

// volumeSource is held as the runtime's volume writer reads it.
type volumeSource struct{}

func (volumeSource) ConfigMap(ns, name string) *corev1.ConfigMap {
	cm, _ := held{}.ConfigMap(ns, name)
	return cm
}
func (volumeSource) Secret(ns, name string) *corev1.Secret { s, _ := held{}.Secret(ns, name); return s }
func (volumeSource) Token(_, _, _, _ string) *edgesyncv1.ServiceAccountToken {
	return nil
}

// handler serves held, its pod's volumes written as the agent's runtime
// writes them.
func handler(t *testing.T, allowExec bool) http.Handler {
	t.Helper()
	vols := volumes.New(t.TempDir())
	pod, _ := held{}.Pod("ns", "web")
	if _, err := vols.Sync(pod, volumeSource{}); err != nil {
		t.Fatal(err)
	}
	return simkubelet.New(simkubelet.Config{
		Node: "edge-1", Objects: held{}, AllowExec: allowExec, Volumes: vols,
		Now: func() time.Time { return start.Add(5*time.Second + 500*time.Millisecond) },
	})
}

func call(t *testing.T, h http.Handler, method, target string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestLogs(t *testing.T) {
	h := handler(t, false)
	header := "started container web of pod ns/web (image nginx:1.27) on node edge-1\n" +
		"env password (from secret creds, 6 bytes)\n" +
		"env MODE=edge\n" +
		"file /etc/web/greeting (5 bytes)\n"
	ticks := "running for 1s\nrunning for 2s\nrunning for 3s\nrunning for 4s\nrunning for 5s\n"
	for _, tc := range []struct {
		name, query string
		code        int
		want        string
	}{
		{"everything", "", 200, header + ticks},
		{"tail", "?tailLines=2", 200, "running for 4s\nrunning for 5s\n"},
		{"tail zero", "?tailLines=0", 200, ""},
		{"limitBytes", "?limitBytes=17", 200, "started container"},
		{"sinceSeconds", "?sinceSeconds=2", 200, "running for 4s\nrunning for 5s\n"},
		{"timestamps", "?tailLines=1&timestamps=true", 200, "2026-01-02T03:04:10Z running for 5s\n"},
		{"previous", "?previous=true", 400, "previous terminated container \"web\" in pod \"web\" not found\n"},
		{"bad tail", "?tailLines=x", 400, "tailLines must be a non-negative integer\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := call(t, h, http.MethodGet, "/containerLogs/ns/web/web"+tc.query)
			if code != tc.code || body != tc.want {
				t.Errorf("%d %q, want %d %q", code, body, tc.code, tc.want)
			}
		})
	}
	t.Run("secret values are not logged", func(t *testing.T) {
		if _, body := call(t, h, http.MethodGet, "/containerLogs/ns/web/web"); strings.Contains(body, "s3cret") {
			t.Errorf("the log shows the secret's value: %q", body)
		}
	})
}

func TestNotHere(t *testing.T) {
	h := handler(t, true)
	for target, want := range map[string]string{
		"/containerLogs/ns/other/web":  "pod ns/other is not on node edge-1\n",
		"/containerLogs/ns/web/nginx":  "container \"nginx\" not found in pod ns/web\n",
		"/exec/ns/web/uid-2/web?cmd=x": "pod ns/web with uid uid-2 is not on node edge-1\n",
	} {
		if code, body := call(t, h, http.MethodGet, target); code != http.StatusNotFound || body != want {
			t.Errorf("%s: %d %q, want 404 %q", target, code, body, want)
		}
	}
}

func TestRun(t *testing.T) {
	t.Run("exec allowed", func(t *testing.T) {
		h := handler(t, true)
		for cmd, want := range map[string]string{
			"cat+/etc/web/greeting": "hello",    // the configmap volume's file
			"printenv+password":     "s3cret\n", // the container's environment
			"printenv+MODE":         "edge\n",
		} {
			if code, body := call(t, h, http.MethodPost, "/run/ns/web/web?cmd="+cmd); code != 200 || body != want {
				t.Errorf("run %s: %d %q, want %q", cmd, code, body, want)
			}
		}
	})
	t.Run("no volumes on disk", func(t *testing.T) {
		h := simkubelet.New(simkubelet.Config{Node: "edge-1", Objects: held{}, AllowExec: true})
		code, body := call(t, h, http.MethodPost, "/run/ns/web/web?cmd=true")
		if code != http.StatusInternalServerError || !strings.Contains(body, "in-memory store") {
			t.Errorf("%d %q, want 500 saying why", code, body)
		}
	})
	t.Run("exec not allowed", func(t *testing.T) {
		h := handler(t, false)
		for _, target := range []string{"/run/ns/web/web?cmd=true", "/exec/ns/web/web?command=true&output=1"} {
			code, body := call(t, h, http.MethodPost, target)
			if code != http.StatusForbidden || !strings.Contains(body, "--allow-exec") {
				t.Errorf("%s: %d %q, want 403 naming --allow-exec", target, code, body)
			}
		}
	})
}

// heldWithPort is held, its pod declaring port.
type heldWithPort struct {
	held
	port int32
}

func (h heldWithPort) Pod(ns, name string) (*corev1.Pod, error) {
	pod, _ := h.held.Pod(ns, name)
	if pod != nil {
		pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: h.port}}
	}
	return pod, nil
}

// loopbackServer serves text on the loopback and returns its port.
func loopbackServer(t *testing.T, text string) int32 {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, text)
			c.Close()
		}
	}()
	return int32(lis.Addr().(*net.TCPAddr).Port)
}

// forward opens one port-forward stream pair over SPDY, as the apiserver
// does for kubectl port-forward, and returns what the data stream and the
// error stream carried.
func forward(t *testing.T, url string, port int32) (data, errText string) {
	t.Helper()
	rt, upgrader, err := spdy.RoundTripperFor(&rest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, mustURL(t, url)).
		Dial(portforward.ProtocolV1Name)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	headers := http.Header{}
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	headers.Set(corev1.PortHeader, strconv.Itoa(int(port)))
	headers.Set(corev1.PortForwardRequestIDHeader, "0")
	errStream, err := conn.CreateStream(headers)
	if err != nil {
		t.Fatal(err)
	}
	_ = errStream.Close() // nothing to send
	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	dataStream, err := conn.CreateStream(headers)
	if err != nil {
		t.Fatal(err)
	}
	_ = dataStream.Close()
	d, _ := io.ReadAll(dataStream) // reset when refused
	e, _ := io.ReadAll(errStream)
	return string(d), string(e)
}

func mustURL(t *testing.T, s string) *neturl.URL {
	t.Helper()
	u, err := neturl.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestPortForwardOnlyToDeclaredPorts(t *testing.T) {
	declared := loopbackServer(t, "the pod's port")
	other := loopbackServer(t, "another service on the edge host")
	srv := httptest.NewServer(simkubelet.New(simkubelet.Config{Node: "edge-1", Objects: heldWithPort{port: declared}}))
	t.Cleanup(srv.Close)

	t.Run("declared port", func(t *testing.T) {
		data, errText := forward(t, srv.URL+"/portForward/ns/web", declared)
		if data != "the pod's port" || errText != "" {
			t.Errorf("got %q, error %q; want the pod's port's answer", data, errText)
		}
	})
	t.Run("undeclared port", func(t *testing.T) {
		data, errText := forward(t, srv.URL+"/portForward/ns/web", other)
		want := fmt.Sprintf("port %d is not a port of pod ns/web (it declares %d): port-forward reaches only the ports its containers declare", other, declared)
		if data != "" || !strings.Contains(errText, want) {
			t.Errorf("got %q, error %q; want nothing and an error containing %q", data, errText, want)
		}
	})
	t.Run("pod without ports", func(t *testing.T) {
		srv := httptest.NewServer(simkubelet.New(simkubelet.Config{Node: "edge-1", Objects: held{}}))
		t.Cleanup(srv.Close)
		_, errText := forward(t, srv.URL+"/portForward/ns/web", declared)
		if want := "(it declares no ports)"; !strings.Contains(errText, want) {
			t.Errorf("error %q, want it to say %q", errText, want)
		}
	})
	t.Run("undeclared port over WebSocket", func(t *testing.T) {
		// A WebSocket request names its ports up front: refused before the
		// upgrade, with a Status the client shows.
		req := httptest.NewRequest(http.MethodGet, fmt.Sprintf("/portForward/ns/web?port=%d", other), nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		rec := httptest.NewRecorder()
		simkubelet.New(simkubelet.Config{Node: "edge-1", Objects: heldWithPort{port: declared}}).ServeHTTP(rec, req)
		var st metav1.Status
		if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil || rec.Code != http.StatusForbidden ||
			!strings.Contains(st.Message, fmt.Sprintf("port %d is not a port of pod ns/web", other)) {
			t.Errorf("%d %q, want 403 with a Status naming the port", rec.Code, rec.Body.String())
		}
	})
}
