package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

type clusterConfig struct {
	dir     string
	port    int
	crdDir  string
	timings lifecycleTimings
}

type cluster struct {
	url        string
	kubeconfig string
	failed     chan error // receives when a component exits on its own
	stop       func()
}

// freePort asks the kernel for an unused loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startCluster(ctx context.Context, cfg clusterConfig) (*cluster, error) {
	for _, sub := range []string{"etcd", "pki"} {
		if err := os.RemoveAll(filepath.Join(cfg.dir, sub)); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		return nil, err
	}
	pki, err := makePKI(filepath.Join(cfg.dir, "pki"))
	if err != nil {
		return nil, fmt.Errorf("create control-plane PKI: %w", err)
	}

	etcd, err := startEtcd(cfg.dir)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	stopEtcd := func() {
		etcd.Close()
	}

	port := cfg.port
	if port == 0 {
		if port, err = freePort(); err != nil {
			stopEtcd()
			return nil, err
		}
	}
	apiCtx, cancelAPI := context.WithCancel(ctx)
	apiDone := make(chan error, 1)
	logFile, err := os.Create(filepath.Join(cfg.dir, "apiserver.log"))
	if err != nil {
		cancelAPI()
		stopEtcd()
		return nil, err
	}
	if err := startAPIServer(apiCtx, apiServerConfig{
		port:       port,
		etcdURL:    etcd.Clients[0].Addr().String(),
		pki:        pki,
		certDir:    filepath.Join(cfg.dir, "pki", "apiserver-generated"),
		timings:    cfg.timings,
		logOutput:  logFile,
		exitResult: apiDone,
	}); err != nil {
		cancelAPI()
		stopEtcd()
		return nil, err
	}

	c := &cluster{
		url:        fmt.Sprintf("https://127.0.0.1:%d", port),
		kubeconfig: filepath.Join(cfg.dir, "kubeconfig"),
		failed:     make(chan error, 1),
	}
	stopped := make(chan struct{})
	var components []*component // appended by startCluster only, before it returns
	c.stop = func() {
		select {
		case <-stopped:
			return
		default:
		}
		close(stopped)
		for i := len(components) - 1; i >= 0; i-- {
			components[i].stop()
		}
		cancelAPI()
		select {
		case <-apiDone:
		case <-time.After(30 * time.Second):
			fmt.Fprintln(os.Stderr, "devcluster: kube-apiserver did not stop within 30s")
		}
		stopEtcd()
		logFile.Close()
	}
	go func() {
		err := <-apiDone
		select {
		case <-stopped:
		default:
			if err == nil {
				err = errors.New("kube-apiserver exited")
			}
			c.failed <- fmt.Errorf("kube-apiserver stopped: %w (see %s)", err, logFile.Name())
		}
		// Put the result back for stop, which waits for it.
		apiDone <- err
	}()

	restConfig := clientConfig(c.url, pki.caPEM, pki.admin)
	if err := writeKubeconfig(c.kubeconfig, restConfig); err != nil {
		c.stop()
		return nil, err
	}
	if err := waitReady(ctx, restConfig, c.failed); err != nil {
		c.stop()
		return nil, err
	}

	// The controller-manager and the scheduler, each with a kubeconfig and
	// client certificate of its own.
	pkiDir := filepath.Join(cfg.dir, "pki")
	for _, spec := range []struct {
		name string
		cert clientCert
		args func(kubeconfig, certDir string, port int) []string
	}{
		{controllerManagerCommand, pki.controllerManager, func(kubeconfig, certDir string, port int) []string {
			return controllerManagerArgs(pki, kubeconfig, certDir, port, cfg.timings)
		}},
		{schedulerCommand, pki.scheduler, schedulerArgs},
	} {
		kubeconfig := filepath.Join(pkiDir, spec.name+".kubeconfig")
		if err := writeKubeconfig(kubeconfig, clientConfig(c.url, pki.caPEM, spec.cert)); err != nil {
			c.stop()
			return nil, err
		}
		healthPort, err := freePort()
		if err != nil {
			c.stop()
			return nil, err
		}
		comp, err := startComponent(cfg.dir, spec.name, healthPort,
			spec.args(kubeconfig, filepath.Join(pkiDir, spec.name+"-generated"), healthPort))
		if err != nil {
			c.stop()
			return nil, err
		}
		components = append(components, comp)
	}
	for _, comp := range components {
		if err := comp.waitHealthy(ctx); err != nil {
			c.stop()
			return nil, err
		}
		go func() {
			<-comp.exited
			select {
			case <-stopped:
			default:
				c.failed <- comp.failure()
			}
		}()
	}
	fmt.Fprintf(os.Stderr, "devcluster: kube-controller-manager and kube-scheduler started (logs in %s)\n", cfg.dir)
	if err := waitServiceAccounts(ctx, restConfig); err != nil {
		c.stop()
		return nil, err
	}
	if err := applyCRDs(ctx, restConfig, cfg.crdDir); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// clientConfig is a client of the devcluster authenticated by cert.
func clientConfig(host string, caPEM []byte, cert clientCert) *rest.Config {
	return &rest.Config{
		Host: host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   caPEM,
			CertData: cert.certPEM,
			KeyData:  cert.keyPEM,
		},
		QPS:   100,
		Burst: 200,
	}
}

// waitServiceAccounts waits until the controller-manager has created the
// default ServiceAccount and the kube-root-ca.crt ConfigMap of the default
// namespace: from then on pods can be created there (ServiceAccount
// admission refuses pods whose ServiceAccount does not exist yet).
func waitServiceAccounts(ctx context.Context, cfg *rest.Config) error {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var lastErr error
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if _, lastErr = client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); lastErr != nil {
			return false, nil
		}
		if _, lastErr = client.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); lastErr != nil {
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("controller-manager did not create the default ServiceAccount: %w (last: %v)", err, lastErr)
	}
	return nil
}

func startEtcd(dir string) (*embed.Etcd, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "devcluster"
	cfg.Dir = filepath.Join(dir, "etcd")
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(clientPort)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	// A test cluster does not need durable fsyncs.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcd was not ready within 60s")
	}
}

type apiServerConfig struct {
	port       int
	etcdURL    string
	pki        *devPKI
	certDir    string
	timings    lifecycleTimings
	logOutput  io.Writer
	exitResult chan<- error
}

// startAPIServer runs kube-apiserver in this process until ctx ends.
func startAPIServer(ctx context.Context, cfg apiServerConfig) error {
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	for name, value := range map[string]string{
		"logtostderr": "false", "alsologtostderr": "false", "stderrthreshold": "FATAL", "v": "0",
	} {
		if err := klogFlags.Set(name, value); err != nil {
			return err
		}
	}
	klog.SetOutput(cfg.logOutput)

	s := options.NewServerRunOptions()
	fs := s.Flags()
	args := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(cfg.port),
		"--etcd-servers=http://" + cfg.etcdURL,
		"--cert-dir=" + cfg.certDir,
		"--tls-cert-file=" + cfg.pki.serverCertFile,
		"--tls-private-key-file=" + cfg.pki.serverKeyFile,
		"--client-ca-file=" + cfg.pki.caFile,
		"--kubelet-client-certificate=" + cfg.pki.kubeletClientCertFile,
		"--kubelet-client-key=" + cfg.pki.kubeletClientKeyFile,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + cfg.pki.saPublicFile,
		"--service-account-signing-key-file=" + cfg.pki.saPrivateFile,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC",
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	}
	if cfg.timings.unreachableTolerationSeconds > 0 {
		args = append(args, "--default-unreachable-toleration-seconds="+strconv.Itoa(cfg.timings.unreachableTolerationSeconds))
	}
	if cfg.timings.notReadyTolerationSeconds > 0 {
		args = append(args, "--default-not-ready-toleration-seconds="+strconv.Itoa(cfg.timings.notReadyTolerationSeconds))
	}
	all := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, named := range fs.FlagSets {
		all.AddFlagSet(named)
	}
	if err := all.Parse(args); err != nil {
		return fmt.Errorf("kube-apiserver flags: %w", err)
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return fmt.Errorf("kube-apiserver options: %w", err)
	}
	if errs := completed.Validate(); len(errs) > 0 {
		return fmt.Errorf("kube-apiserver options: %v", errs)
	}
	go func() {
		cfg.exitResult <- apiserverapp.Run(ctx, completed)
	}()
	return nil
}

func waitReady(ctx context.Context, cfg *rest.Config, failed <-chan error) error {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var lastErr error
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-failed:
			return false, err
		default:
		}
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			lastErr = fmt.Errorf("%w: %s", err, bytes.TrimSpace(body))
			return false, nil
		}
		// The system namespaces appear shortly after /readyz passes.
		for _, ns := range []string{"default", "kube-system", "kube-node-lease"} {
			if _, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
				lastErr = err
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("kube-apiserver not ready: %w (last: %v)", err, lastErr)
	}
	return nil
}

func applyCRDs(ctx context.Context, cfg *rest.Config, dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return err
	}
	client, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var names []string
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := decoder.Decode(&crd); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return fmt.Errorf("decode %s: %w", file, err)
			}
			if crd.Name == "" {
				continue
			}
			if _, err := client.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create CRD %s from %s: %w", crd.Name, file, err)
			}
			names = append(names, crd.Name)
		}
	}
	for _, name := range names {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			crd, err := client.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("CRD %s not established: %w", name, err)
		}
	}
	return nil
}

func writeKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["devcluster"] = &clientcmdapi.Cluster{
		Server:                   cfg.Host,
		CertificateAuthorityData: cfg.CAData,
	}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData,
		ClientKeyData:         cfg.KeyData,
	}
	kc.Contexts["devcluster"] = &clientcmdapi.Context{Cluster: "devcluster", AuthInfo: "admin"}
	kc.CurrentContext = "devcluster"
	return clientcmd.WriteToFile(*kc, path)
}
