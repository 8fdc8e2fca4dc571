package edgesim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/backoff"
	"github.com/edgesync/edgesync/edgeclient/router"
	"github.com/edgesync/edgesync/edgeclient/store"
	"github.com/edgesync/edgesync/server/feed"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// EdgeclientConfig makes a fleet run every edge through the edgeclient
// library (the one real agents import) with an in-memory store, instead of
// the lean built-in protocol client.
type EdgeclientConfig struct {
	// CAFile is the CA the server certificate chains to.
	CAFile string
	// CertDir receives one certificate and key file per edge.
	CertDir string
	// MQTTBroker, when set, runs KubeEdge's router at every edge (package
	// edgeclient/router, as edgesync-agent --mqtt-broker does), each
	// with its own connection to this broker: routed deliveries are
	// published there.
	MQTTBroker string
}

// writeCert writes an edge's certificate and key as PEM files.
func writeCert(dir, name string, c tls.Certificate) (certFile, keyFile string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	var certPEM []byte
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return "", "", fmt.Errorf("edge %s key: %w", name, err)
	}
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// runClient runs the edge through edgeclient until ctx ends, turning the
// client's state and events into the fleet's counters. welcomed is called
// once the first stream is up.
func (e *edge) runClient(ctx context.Context, welcomed func()) error {
	f := e.fleet
	ec := f.cfg.Edgeclient
	ccfg := edgeclient.Config{
		Server: e.addrs[0], Servers: e.addrs[1:], CAFile: ec.CAFile, CertFile: e.certFile, KeyFile: e.keyFile,
		NodeName: e.name, Store: store.NewMemory(), AgentVersion: "edgesync-bench/edgeclient",
		Backoff: backoff.Config{Initial: 500 * time.Millisecond, Max: 5 * time.Second},
		OnEvent: func(_ context.Context, ev edgeclient.Event) error {
			e.onClientEvent(ev)
			return nil
		},
	}
	var routes *router.Router
	if ec.MQTTBroker != "" {
		routes = router.New(router.Config{Broker: ec.MQTTBroker, ClientID: "edgesync-bench-" + e.name})
		ccfg.Router = routes
	}
	cl, err := edgeclient.New(ccfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	if f.cfg.Subscriptions != nil {
		for _, sub := range f.cfg.Subscriptions(e.name) {
			if _, err := cl.Subscribe(sub); err != nil {
				return err
			}
		}
	}
	runDone := make(chan error, 1)
	go func() { runDone <- cl.Run(ctx) }()
	defer func() { <-runDone }()
	if routes != nil {
		routesDone := make(chan struct{})
		go func() { _ = routes.Run(ctx, cl); close(routesDone) }()
		defer func() { <-routesDone }()
	}

	// The client's state counts streams and received objects; the fleet's
	// counters follow its changes.
	var prev edgeclient.State
	for {
		changed := cl.StateChanged()
		st := cl.State()
		if st.Connected != prev.Connected {
			if st.Connected {
				f.C.Connected.Add(1)
				welcomed()
			} else {
				f.C.Connected.Add(-1)
			}
		}
		if st.Connected != prev.Connected || st.Synced != prev.Synced || st.ServerID != prev.ServerID {
			e.setStream(st.ServerID, st.Connected, st.Connected && st.Synced)
		}
		if st.Synced != prev.Synced {
			if st.Synced {
				f.C.Synced.Add(1)
			} else {
				f.C.Synced.Add(-1)
			}
		}
		applies := int64(st.ObjectsReceived - prev.ObjectsReceived)
		f.C.Objects.Add(applies + int64(st.DeletesReceived-prev.DeletesReceived))
		f.C.clientApplies.Add(applies)
		if d := st.Connections - prev.Connections; prev.Connections > 0 && d > 0 {
			f.C.StreamsEnded.Add(int64(d))
		}
		if st.LastError != "" && st.LastError != prev.LastError {
			f.setErr(fmt.Errorf("edge %s: %s", e.name, st.LastError))
		}
		prev = st
		select {
		case <-ctx.Done():
			if prev.Connected {
				f.C.Connected.Add(-1)
			}
			if prev.Synced {
				f.C.Synced.Add(-1)
			}
			return nil
		case <-changed:
		}
	}
}

// onClientEvent records a change the edgeclient applied to its store.
func (e *edge) onClientEvent(ev edgeclient.Event) {
	f := e.fleet
	key := feed.Key{Kind: ev.Key.Kind, Namespace: ev.Key.Namespace, Name: ev.Key.Name}
	e.mu.Lock()
	if ev.Type == edgeclient.Deleted {
		delete(e.held, key)
		delete(e.at, key)
	} else {
		f.C.clientChanges.Add(1)
		if e.at == nil {
			e.at = map[feed.Key]time.Time{}
		}
		if old, ok := e.held[key]; !ok || old.GetResourceVersion() != ev.ResourceVersion {
			e.at[key] = time.Now()
		}
		e.held[key] = &edgesyncv1.ObjectRef{Kind: key.Kind, Namespace: key.Namespace, Name: key.Name, Uid: ev.UID, ResourceVersion: ev.ResourceVersion}
	}
	e.mu.Unlock()
	if cm := ev.Object.ConfigMap; f.cfg.RecordLatency && cm != nil && ev.Type != edgeclient.Deleted {
		if ns, err := strconv.ParseInt(cm.Data[SentAtKey], 10, 64); err == nil {
			d := time.Since(time.Unix(0, ns))
			f.mu.Lock()
			f.latencies = append(f.latencies, d)
			f.mu.Unlock()
		}
	}
}
