// Package kubeletproxy is the agent's side of a real node's kubelet API:
// the kubelet requests the cloud carries to the node through tunnels
// (kubectl logs, exec, attach, port-forward, and the stats, metrics, pods
// and healthz paths) are passed, unchanged, to the stock kubelet's server
// on the node's loopback, over TLS with a client certificate of the
// agent's own. Upgrades (SPDY, WebSocket) pass through.
//
// The kubelet trusts only that certificate: Credentials keeps a CA private
// to the node that signs the agent's client certificate and the kubelet's
// serving certificate, so the kubelet's configuration names the CA as its
// client CA (authentication.x509.clientCAFile, webhook and anonymous
// authentication off) and needs no authorization of its own: the cloud
// has authorized each request (server/kubeletapi's SubjectAccessReview)
// before it reached the node. The agent forwards only the paths the cloud
// serves; the kubelet's others (/logs of the host, /configz, /debug) are
// refused on the node too.
package kubeletproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"go.uber.org/zap"
)

// DefaultURL is where the kubelet serves when its configuration keeps
// address 127.0.0.1 and port 10250.
const DefaultURL = "https://127.0.0.1:10250"

// Forwarded are the first path segments passed to the kubelet.
var Forwarded = map[string]bool{
	"containerLogs": true, "exec": true, "attach": true, "portForward": true, "run": true,
	"stats": true, "metrics": true, "pods": true, "healthz": true,
}

// Config configures a Proxy.
type Config struct {
	// URL is the kubelet's server, https://127.0.0.1:PORT. Default DefaultURL.
	URL string
	// Credentials are the CA and the agent's client certificate.
	Credentials *Credentials
	// Logger receives the proxy's logs. Default: none.
	Logger *zap.Logger
}

// Proxy is an http.Handler passing kubelet API requests to the kubelet.
type Proxy struct {
	target *url.URL
	log    *zap.Logger
	rp     *httputil.ReverseProxy
	tr     *http.Transport
}

// New builds a Proxy; it reads the credentials' files once.
func New(cfg Config) (*Proxy, error) {
	if cfg.Credentials == nil {
		return nil, errors.New("kubeletproxy: Credentials are required")
	}
	if cfg.URL == "" {
		cfg.URL = DefaultURL
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	target, err := url.Parse(cfg.URL)
	if err != nil || target.Scheme != "https" || target.Host == "" {
		return nil, fmt.Errorf("kubeletproxy: kubelet URL %q: want https://HOST:PORT", cfg.URL)
	}
	caPEM, err := os.ReadFile(cfg.Credentials.Path(CAFile))
	if err != nil {
		return nil, fmt.Errorf("kubeletproxy: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("kubeletproxy: %s holds no certificate", cfg.Credentials.Path(CAFile))
	}
	cert, err := tls.LoadX509KeyPair(cfg.Credentials.Path(ClientCertFile), cfg.Credentials.Path(ClientKeyFile))
	if err != nil {
		return nil, fmt.Errorf("kubeletproxy: agent client certificate: %w", err)
	}
	p := &Proxy{target: target, log: cfg.Logger}
	p.tr = &http.Transport{
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{cert}},
		// HTTP/1.1 only: upgrades (exec, attach, port-forward) need it.
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(p.target)
			r.Out.URL.Path, r.Out.URL.RawPath = r.In.URL.Path, r.In.URL.RawPath
		},
		Transport:     p.tr,
		FlushInterval: -1, // logs -f: each write at once
		ErrorHandler:  p.proxyError,
		ErrorLog:      zap.NewStdLog(p.log.WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
	}
	return p, nil
}

// ServeHTTP forwards r to the kubelet when its path is one the cloud
// serves.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	first, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if !Forwarded[first] || path.Clean(r.URL.Path) != r.URL.Path {
		http.Error(w, fmt.Sprintf("edgesync-agent does not forward %q to the kubelet", r.URL.Path), http.StatusNotFound)
		return
	}
	p.rp.ServeHTTP(w, r)
}

// Target is the kubelet's address.
func (p *Proxy) Target() string { return p.target.String() }

// Close closes idle connections to the kubelet.
func (p *Proxy) Close() { p.tr.CloseIdleConnections() }

// proxyError answers a request the kubelet could not be reached for with
// 500, whose text the apiserver passes on to kubectl.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil || errors.Is(err, context.Canceled) {
		return // the caller went away
	}
	p.log.Info("cannot reach the kubelet", zap.String("path", r.URL.Path), zap.Error(err))
	http.Error(w, fmt.Sprintf("edgesync-agent cannot reach the kubelet at %s: %v", p.target.Host, err), http.StatusInternalServerError)
}
