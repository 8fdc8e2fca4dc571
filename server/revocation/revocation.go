// Package revocation ends a node's identity: once an operator revokes a
// node (`edgesync-server node revoke NAME`, or AdminService.RevokeNode),
// every certificate the node holds stops working on every replica, and it
// can join again only with a token made after the revocation.
//
// The record is a per-node generation, kept in one ConfigMap
// (RecordName) in the server's namespace that every replica watches.
// Certificates the bootstrap service signs carry the node's generation at
// signing time (pki.NodeGeneration); a certificate whose generation is
// below the node's current one is revoked. Revoking increments the
// generation, so no serial numbers need to be remembered, and a node that
// joins again is signed at the new generation. A generation rather than a
// revocation time: certificates are backdated for clock skew, so a time
// could not tell a certificate signed just before a revocation from one
// signed just after.
//
// The server checks every call on its gRPC port (Sync, Tunnel,
// BootstrapService.RenewCertificate) with Check, and ends a revoked node's
// session when the record changes (List.Run's onRevoke).
package revocation

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/edgesync/edgesync/server/pki"
)

// RecordName is the ConfigMap, in the server's namespace, that holds
// every revoked node's generation: one data key per node.
const RecordName = "edgesync-revocations"

// Entry is one node's revocation record, stored as JSON under its name.
type Entry struct {
	// Generation is the node's current certificate generation: its
	// certificates of a lower generation are revoked.
	Generation int64 `json:"generation"`
	// RevokedAt is when the last revocation was made; bootstrap tokens
	// bound to the node and created before it no longer join it.
	RevokedAt time.Time `json:"revokedAt"`
}

// Revoke increments node's generation in the record (creating it when
// missing) and returns the new entry. It retries on conflicts with
// concurrent revocations.
func Revoke(ctx context.Context, client kubernetes.Interface, namespace, node string) (Entry, error) {
	var entry Entry
	cms := client.CoreV1().ConfigMaps(namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, RecordName, metav1.GetOptions{})
		create := apierrors.IsNotFound(err)
		switch {
		case create:
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
				Name: RecordName, Namespace: namespace,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "edgesync"},
			}}
		case err != nil:
			return err
		}
		prev, _ := parse(cm.Data[node])
		entry = Entry{Generation: prev.Generation + 1, RevokedAt: time.Now().UTC().Truncate(time.Second)}
		b, _ := json.Marshal(entry)
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[node] = string(b)
		if create {
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: "edgesync"})
			if apierrors.IsAlreadyExists(err) {
				// Created meanwhile by another revocation: read it again.
				return apierrors.NewConflict(corev1.Resource("configmaps"), RecordName, err)
			}
			return err
		}
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: "edgesync"})
		return err
	})
	if err != nil {
		return Entry{}, fmt.Errorf("revoke node %q in ConfigMap %s/%s: %w", node, namespace, RecordName, err)
	}
	return entry, nil
}

// Current reads node's entry from the record through the API server (the
// zero Entry when the node was never revoked), for tools that have no List,
// such as `token create`.
func Current(ctx context.Context, client kubernetes.Interface, namespace, node string) (Entry, error) {
	cm, err := client.CoreV1().ConfigMaps(namespace).Get(ctx, RecordName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return Entry{}, nil
	case err != nil:
		return Entry{}, fmt.Errorf("read revocations of node %q in ConfigMap %s/%s: %w", node, namespace, RecordName, err)
	}
	e, _ := parse(cm.Data[node])
	return e, nil
}

func parse(s string) (Entry, bool) {
	var e Entry
	if s == "" || json.Unmarshal([]byte(s), &e) != nil || e.Generation < 0 {
		return Entry{}, false
	}
	return e, true
}

// List is every replica's view of the record, from an informer on the
// one ConfigMap. The zero List is not usable; use New.
type List struct {
	informer  cache.SharedIndexInformer
	log       *zap.Logger
	client    kubernetes.Interface
	namespace string

	mu      sync.RWMutex     // guards entries
	entries map[string]Entry // by node
}

// New returns a List of the record in namespace; nothing talks to the API
// server before Run.
func New(client kubernetes.Interface, namespace string, log *zap.Logger) *List {
	if log == nil {
		log = zap.NewNop()
	}
	inf := coreinformers.NewFilteredConfigMapInformer(client, namespace, 0, cache.Indexers{}, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", RecordName).String()
	})
	return &List{informer: inf, log: log, client: client, namespace: namespace, entries: map[string]Entry{}}
}

// Revoke revokes node through the List's client (see the package
// function), for AdminService.RevokeNode.
func (l *List) Revoke(ctx context.Context, node string) (generation int64, at time.Time, err error) {
	e, err := Revoke(ctx, l.client, l.namespace, node)
	return e.Generation, e.RevokedAt, err
}

// Run watches the record until ctx ends. onRevoke (which may be nil) is
// called, from the informer's goroutine, with each node whose generation
// rose, and the status its sessions end with. It returns an error only
// when ctx ended before the record was first read.
func (l *List) Run(ctx context.Context, onRevoke func(node string, reason error)) error {
	update := func(obj any) {
		cm, ok := obj.(*corev1.ConfigMap)
		if d, tomb := obj.(cache.DeletedFinalStateUnknown); tomb {
			cm, ok = d.Obj.(*corev1.ConfigMap)
		}
		if !ok {
			return
		}
		next := make(map[string]Entry, len(cm.Data))
		for node, v := range cm.Data {
			if e, ok := parse(v); ok {
				next[node] = e
			} else {
				l.log.Warn("ignoring an unreadable revocation entry", zap.String("node", node))
			}
		}
		l.mu.Lock()
		prev := l.entries
		l.entries = next
		l.mu.Unlock()
		var raised []string
		for node, e := range next {
			if e.Generation > prev[node].Generation {
				raised = append(raised, node)
			}
		}
		sort.Strings(raised)
		for _, node := range raised {
			l.log.Info("node revoked", zap.String("node", node), zap.Int64("generation", next[node].Generation))
			if onRevoke != nil {
				onRevoke(node, revokedError(node, next[node]))
			}
		}
	}
	if _, err := l.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, n any) { update(n) },
		// A deleted record revokes nothing more; what it said stays until
		// a record comes back, so that deleting it cannot revive a node.
	}); err != nil {
		return fmt.Errorf("revocation: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { l.informer.Run(ctx.Done()) })
	if !cache.WaitForCacheSync(ctx.Done(), l.informer.HasSynced) {
		return fmt.Errorf("revocation: record not read: %w", context.Cause(ctx))
	}
	<-ctx.Done()
	return nil
}

// Synced reports whether the record has been read.
func (l *List) Synced() bool { return l.informer.HasSynced() }

// Entry returns node's record; the zero Entry when it was never revoked.
func (l *List) Entry(node string) Entry {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.entries[node]
}

// ErrNotSynced is Check's answer before the record was read.
var ErrNotSynced = errors.New("the server has not read its revocation record yet")

// Check refuses a node certificate whose generation is below the node's:
// PERMISSION_DENIED saying what to do, or UNAVAILABLE before the record
// was read. Certificates that are not node certificates pass.
func (l *List) Check(cert *x509.Certificate) error {
	node, ok := pki.NodeName(cert)
	if !ok {
		return nil
	}
	if !l.Synced() {
		return status.Error(codes.Unavailable, ErrNotSynced.Error()+"; retry shortly")
	}
	e := l.Entry(node)
	if pki.NodeGeneration(cert) >= e.Generation {
		return nil
	}
	return revokedError(node, e)
}

// The google.rpc.ErrorInfo a revoked node's status carries, so that an
// edge can tell a revocation from other refusals and delete the
// credentials it holds (api/edgesync/v1 sync.proto, "Errors").
const (
	ErrorDomain       = "edgesync.io"
	ReasonNodeRevoked = "NODE_REVOKED"
)

func revokedError(node string, e Entry) error {
	st := status.Newf(codes.PermissionDenied,
		"node %q was revoked by an operator at %s: its certificates no longer work; join again with a new token (`edgesync-server token create --node %s`)",
		node, e.RevokedAt.Format(time.RFC3339), node)
	withInfo, err := st.WithDetails(&errdetails.ErrorInfo{
		Domain: ErrorDomain, Reason: ReasonNodeRevoked,
		Metadata: map[string]string{"node": node, "generation": strconv.FormatInt(e.Generation, 10)},
	})
	if err != nil { // cannot happen: ErrorInfo always marshals
		return st.Err()
	}
	return withInfo.Err()
}
