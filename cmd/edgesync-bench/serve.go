package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/router"
	"github.com/edgesync/edgesync/internal/bench/certs"
	"github.com/edgesync/edgesync/internal/bench/edgesim"
	"github.com/edgesync/edgesync/internal/bench/netx"
	"github.com/edgesync/edgesync/internal/bench/rawstream"
	"github.com/edgesync/edgesync/internal/bench/simfeed"
	"github.com/edgesync/edgesync/internal/kubemetrics"
	"github.com/edgesync/edgesync/server"
	"github.com/edgesync/edgesync/server/feed"
)

// ready is the one line a server process prints on stdout once it serves.
type ready struct {
	PID     int    `json:"pid"`
	GRPC    string `json:"grpc"`
	HTTP    string `json:"http"`
	Control string `json:"control"`
	// Router is the router's REST port (HTTPS), with --router-listen.
	Router string `json:"router,omitempty"`
	// Settings are what a server with the real controllers (--kubeconfig)
	// runs with, defaults applied.
	Settings *kubeSettings `json:"settings,omitempty"`
}

// kubeSettings are the settings that decide a server's API-server load:
// the product's defaults unless the benchmark overrode them.
type kubeSettings struct {
	HeartbeatInterval  time.Duration `json:"heartbeat_interval"`
	QPS                float64       `json:"qps"`
	Burst              int           `json:"burst"`
	LeaseQPS           float64       `json:"lease_qps"`
	LeaseBurst         int           `json:"lease_burst"`
	LeaseDuration      time.Duration `json:"lease_duration"`
	LeaseRenewInterval time.Duration `json:"lease_renew_interval"`
	// Defaults tells whether every one of them is the product's default.
	Defaults bool `json:"defaults"`
}

// settings applies the product's defaults (edgesync-server's, the same
// constants) to what the flags left zero.
func (b kubeBudget) settings(heartbeat time.Duration) kubeSettings {
	s := kubeSettings{
		HeartbeatInterval: heartbeat, QPS: b.qps, Burst: b.burst, LeaseQPS: b.leaseQPS, LeaseBurst: int(2 * b.leaseQPS),
		LeaseDuration: controllers.DefaultLeaseDuration, LeaseRenewInterval: b.leaseRenew,
	}
	s.Defaults = heartbeat == 0 && b.qps == 0 && b.burst == 0 && b.leaseQPS == 0 && b.leaseRenew == 0
	if s.HeartbeatInterval == 0 {
		s.HeartbeatInterval = server.DefaultHeartbeatInterval
	}
	if s.QPS == 0 {
		s.QPS = controllers.DefaultQPS
	}
	if s.Burst == 0 {
		s.Burst = controllers.DefaultBurst
	}
	if s.LeaseQPS == 0 {
		s.LeaseQPS, s.LeaseBurst = controllers.DefaultLeaseQPS, controllers.DefaultLeaseBurst
	}
	if s.LeaseRenewInterval == 0 {
		s.LeaseRenewInterval = controllers.DefaultLeaseRenewInterval
	}
	return s
}

// serveMain runs a server under test: "edgesync" (the real server package
// with simulated controllers) or "raw" (the raw grpc-go baseline).
func serveMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	kind := fs.String("kind", "edgesync", "server to run: edgesync or raw")
	certDir := fs.String("certs", "", "directory with ca.crt, ca.key, server.crt, server.key")
	addr := fs.String("addr", "127.0.0.1:0", "gRPC listen address")
	heartbeat := fs.Duration("heartbeat", 0, "heartbeat interval told to edges (0: the product's default, server.DefaultHeartbeatInterval)")
	nodes := fs.Int("nodes", 0, "nodes that hold the initial objects")
	objects := fs.Int("objects", 0, "initial ConfigMaps every node holds (resource version 1)")
	size := fs.Int("size", 1024, "encoded size of each object event in bytes")
	nodeLimit := fs.Int("node-limit", 20000, "most sessions the server holds")
	kubeconfig := fs.String("kubeconfig", "", "run the real controllers against this cluster instead of simulated ones")
	// The zero values of the budget flags are edgesync-server's defaults
	// (the same constants), so that a benchmark run without them measures
	// the product as shipped.
	qps := fs.Float64("kube-qps", 0, "controllers' API-server QPS (with --kubeconfig; 0: the product's default)")
	burst := fs.Int("kube-burst", 0, "controllers' API-server burst (with --kubeconfig; 0: the product's default)")
	leaseQPS := fs.Float64("kube-lease-qps", 0, "controllers' Lease-renewal QPS (with --kubeconfig; burst is twice; 0: the product's default QPS and burst)")
	leaseRenew := fs.Duration("kube-lease-renew", 0, "controllers' Lease renew interval (with --kubeconfig; 0: the product's default)")
	replicaID := fs.String("replica-id", "edgesync-bench", "this server's id (Welcome's server_id; the replica's name in ownership records)")
	ownershipNS := fs.String("ownership-namespace", "", "with --kubeconfig: claim each node in this namespace's ownership records before serving it, as one of several replicas (empty: a single replica)")
	ownershipLease := fs.Duration("ownership-lease-duration", 0, "the replica Lease's duration (with --ownership-namespace; 0: the product default)")
	ownershipQPS := fs.Float64("ownership-qps", 0, "ownership writes per second, burst twice (with --ownership-namespace; 0: the product default)")
	routerListen := fs.String("router-listen", "", "with --kubeconfig: turn on the router (KubeEdge Rules; its CRDs must be installed) and serve its REST port here over TLS with the server certificate")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := netx.RaiseFileLimit(0); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	switch *kind {
	case "raw":
		return serveRaw(ctx, lis, *certDir)
	case "edgesync":
		if *kubeconfig != "" {
			own := controllers.OwnershipConfig{
				Namespace: *ownershipNS, Replica: *replicaID, Address: lis.Addr().String(),
				LeaseDuration: *ownershipLease, QPS: float32(*ownershipQPS), Burst: int(2 * *ownershipQPS),
			}
			return serveKube(ctx, lis, *certDir, *replicaID, *heartbeat, *nodeLimit, *kubeconfig, kubeBudget{qps: *qps, burst: *burst, leaseQPS: *leaseQPS, leaseRenew: *leaseRenew}, own, *routerListen)
		}
		return serveEdgesync(ctx, lis, *certDir, *replicaID, *heartbeat, *nodeLimit, *nodes, *objects, *size)
	default:
		return fmt.Errorf("unknown --kind %q: use edgesync or raw", *kind)
	}
}

func announce(r ready) error {
	r.PID = os.Getpid()
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(os.Stdout, "%s\n", b)
	return err
}

func serveRaw(ctx context.Context, lis net.Listener, certDir string) error {
	tlsCfg, err := certs.ServerTLS(certDir)
	if err != nil {
		return err
	}
	// The same transport settings as server.New gives edge connections.
	srv := grpc.NewServer(append(server.EdgeTransportOptions(), grpc.Creds(credentials.NewTLS(tlsCfg)), rawstream.ServerOption())...)
	rawstream.Register(srv)
	// The raw server's /metrics has only the Go runtime's figures.
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	httpSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go httpSrv.Serve(httpLis)
	defer httpSrv.Close()
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	if err := announce(ready{GRPC: lis.Addr().String(), HTTP: httpLis.Addr().String()}); err != nil {
		return err
	}
	if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// newServer builds the server under test with pprof and Go runtime metrics.
func newServer(certDir, id string, heartbeat time.Duration, nodeLimit int, logger *zap.Logger, reg *prometheus.Registry) (*server.Server, net.Listener, error) {
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	reg.MustRegister(collectors.NewGoCollector())
	srv, err := server.New(server.Options{
		ServerID: id,
		TLS: server.TLSFiles{
			CAFile:   filepath.Join(certDir, certs.CACert),
			CertFile: filepath.Join(certDir, certs.ServerCert),
			KeyFile:  filepath.Join(certDir, certs.ServerKey),
		},
		HeartbeatInterval: heartbeat,
		NodeLimit:         nodeLimit,
		HTTPListener:      httpLis,
		EnablePprof:       true,
		Registerer:        reg,
		Gatherer:          reg,
		Logger:            logger,
	})
	if err != nil {
		httpLis.Close()
		return nil, nil, err
	}
	return srv, httpLis, nil
}

// serveKube runs the server with the real controllers against a cluster.
// It serves only once the informer caches have synced, so that the
// API-server requests counted after the ready line are the sessions' own.
// kubeBudget is the controllers' API-server budget: QPS and burst for
// everything but Lease renewals, and the Lease renewals' own QPS.
type kubeBudget struct {
	qps        float64
	burst      int
	leaseQPS   float64
	leaseRenew time.Duration
}

func serveKube(ctx context.Context, lis net.Listener, certDir, id string, heartbeat time.Duration, nodeLimit int, kubeconfig string, budget kubeBudget, own controllers.OwnershipConfig, routerListen string) error {
	logger, err := zap.NewProduction(zap.IncreaseLevel(zap.WarnLevel))
	if err != nil {
		return err
	}
	defer logger.Sync()
	reg := prometheus.NewRegistry()
	// The server's own API requests, apart from the control plane's.
	if err := kubemetrics.Register(reg); err != nil {
		return err
	}
	set := budget.settings(heartbeat)
	srv, httpLis, err := newServer(certDir, id, set.HeartbeatInterval, nodeLimit, logger, reg)
	if err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = float32(set.QPS), set.Burst
	var (
		routerOpts *router.Options
		routerLis  net.Listener
		routerTLS  *tls.Config
	)
	if routerListen != "" {
		// As edgesync-server --router-listen: the server's certificate,
		// no client certificates (callers bring bearer tokens).
		if routerTLS, err = certs.ServerTLS(certDir); err != nil {
			return err
		}
		routerTLS.ClientAuth, routerTLS.ClientCAs = tls.NoClientCert, nil
		if routerLis, err = net.Listen("tcp", routerListen); err != nil {
			return fmt.Errorf("router listen: %w", err)
		}
		defer routerLis.Close()
		routerOpts = &router.Options{}
	}
	ctrls, err := controllers.New(controllers.Config{
		RESTConfig: cfg, DisableDevices: true, Logger: logger, Registerer: reg,
		LeaseQPS: float32(set.LeaseQPS), LeaseBurst: set.LeaseBurst, LeaseDuration: set.LeaseDuration, LeaseRenewInterval: set.LeaseRenewInterval,
		Ownership: own, Router: routerOpts,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctrlsDone := make(chan error, 1)
	go func() { ctrlsDone <- ctrls.Run(ctx, srv) }()
	select {
	case <-ctrls.Synced():
	case err := <-ctrlsDone:
		return fmt.Errorf("controllers stopped before their caches synced: %w", err)
	}
	r := ready{GRPC: lis.Addr().String(), HTTP: httpLis.Addr().String(), Settings: &set}
	if routerLis != nil {
		rest := &http.Server{Handler: ctrls.Router().Handler(), TLSConfig: routerTLS, ReadHeaderTimeout: 10 * time.Second}
		go rest.ServeTLS(routerLis, "", "")
		defer rest.Close()
		r.Router = routerLis.Addr().String()
	}
	if err := announce(r); err != nil {
		return err
	}
	serveErr := srv.Serve(ctx, lis, ctrls)
	cancel()
	return errors.Join(serveErr, <-ctrlsDone)
}

func serveEdgesync(ctx context.Context, lis net.Listener, certDir, id string, heartbeat time.Duration, nodeLimit, nodes, objects, size int) error {
	ctlLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv, httpLis, err := newServer(certDir, id, heartbeat, nodeLimit, nil, prometheus.NewRegistry())
	if err != nil {
		return err
	}
	ctrls := simfeed.New()
	// The initial objects are the same in every server process started with
	// the same flags, so a restarted server wants what edges already hold.
	all := nodeNames(0, nodes)
	for j := range objects {
		obj, err := simfeed.ConfigMap(fmt.Sprintf("base-%d", j), 1, size, nil)
		if err != nil {
			return err
		}
		ctrls.Put(all, obj)
	}
	ctrls.SetPublisher(srv)

	ctl := &control{ctrls: ctrls}
	ctl.rv.Store(1)
	ctlSrv := &http.Server{Handler: ctl.handler(), ReadHeaderTimeout: 10 * time.Second}
	go ctlSrv.Serve(ctlLis)
	defer ctlSrv.Close()

	if err := announce(ready{GRPC: lis.Addr().String(), HTTP: httpLis.Addr().String(), Control: ctlLis.Addr().String()}); err != nil {
		return err
	}
	return srv.Serve(ctx, lis, ctrls)
}

// nodeNames returns the names of simulated nodes from (inclusive) to to
// (exclusive).
func nodeNames(from, to int) []string {
	out := make([]string, 0, max(to-from, 0))
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("edge-%05d", i))
	}
	return out
}

// control is the endpoint through which the benchmark makes changes, as
// the real controllers would on Kubernetes events: each object version is
// encoded once and published to every recipient.
type control struct {
	ctrls *simfeed.Controllers
	rv    atomic.Uint64
}

func (c *control) handler() http.Handler {
	mux := http.NewServeMux()
	// POST /put?from=&to=&name=&size=&count=: count objects (name-0 ...
	// when count > 1, else name), each a new version, each published to
	// nodes [from, to). The ConfigMap carries the time it was made.
	mux.HandleFunc("POST /put", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		from, _ := strconv.Atoi(q.Get("from"))
		to, _ := strconv.Atoi(q.Get("to"))
		size, _ := strconv.Atoi(q.Get("size"))
		count, _ := strconv.Atoi(q.Get("count"))
		name := q.Get("name")
		if name == "" || to <= from {
			http.Error(w, "need name and from < to", http.StatusBadRequest)
			return
		}
		count = max(count, 1)
		nodes := nodeNames(from, to)
		// Nodes measured through this endpoint never reconnect, so what is
		// published is not recorded as desired (that bookkeeping would
		// cost the server process CPU that real controllers do not spend).
		// Every version is encoded once, then published: object by object
		// to every node (as the controllers publish a shared object), or,
		// with order=node, node by node, every object to one node before
		// the next (each node's queue fills at once, as the raw baseline's
		// streams have all their messages ready).
		objs := make([]*feed.Object, count)
		var rv uint64
		for i := range count {
			n := name
			if count > 1 {
				n = fmt.Sprintf("%s-%d", name, i)
			}
			rv = c.rv.Add(1)
			obj, err := simfeed.ConfigMap(n, rv, size, map[string]string{
				edgesim.SentAtKey: strconv.FormatInt(time.Now().UnixNano(), 10),
			})
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			if q.Get("order") != "node" {
				c.ctrls.Publish(nodes, obj)
			}
			objs[i] = obj
		}
		if q.Get("order") == "node" {
			for _, node := range nodes {
				for _, obj := range objs {
					c.ctrls.Publish([]string{node}, obj)
				}
			}
		}
		json.NewEncoder(w).Encode(map[string]string{"resource_version": strconv.FormatUint(rv, 10)})
	})
	mux.HandleFunc("GET /counts", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(c.ctrls.Counts())
	})
	return mux
}
