package bootstrap

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	coreinformers "k8s.io/client-go/informers/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
)

// UseRecordLabel marks the ConfigMaps, in the server's namespace, that
// record which node consumed a single-use token (one per token, named
// UseRecordName). Creating the record is the consumption: of two joins
// racing with one token, the second create fails. The server thus needs
// no write access to kube-system.
const UseRecordLabel = "edgesync.io/token-use"

// UseRecordName is the name of token id's use record.
func UseRecordName(id string) string { return "edgesync-token-use-" + id }

// caches are the informers joining reads, so that a join attempt costs the
// API server nothing until a token is proven: bootstrap token Secrets in
// kube-system (by type), Nodes (name and labels only) and the use records.
type caches struct {
	informers []cache.SharedIndexInformer
	tokens    corelisters.SecretLister
	nodes     corelisters.NodeLister
	uses      corelisters.ConfigMapLister
	namespace string // of the use records
}

func newCaches(cfg Config) (*caches, error) {
	tokens := coreinformers.NewFilteredSecretInformer(cfg.Client, metav1.NamespaceSystem, 0, cache.Indexers{}, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("type", string(bootstrapapi.SecretTypeBootstrapToken)).String()
	})
	nodes := coreinformers.NewNodeInformer(cfg.Client, 0, cache.Indexers{})
	// A Node's name and labels are all joining needs.
	if err := nodes.SetTransform(func(obj any) (any, error) {
		if n, ok := obj.(*corev1.Node); ok {
			return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels}}, nil
		}
		return obj, nil
	}); err != nil {
		return nil, err
	}
	uses := coreinformers.NewFilteredConfigMapInformer(cfg.Client, cfg.Namespace, 0, cache.Indexers{}, func(o *metav1.ListOptions) {
		o.LabelSelector = labels.Set{UseRecordLabel: "true"}.String()
	})
	return &caches{
		informers: []cache.SharedIndexInformer{tokens, nodes, uses},
		tokens:    corelisters.NewSecretLister(tokens.GetIndexer()),
		nodes:     corelisters.NewNodeLister(nodes.GetIndexer()),
		uses:      corelisters.NewConfigMapLister(uses.GetIndexer()),
		namespace: cfg.Namespace,
	}, nil
}

// Run fills the caches joining reads and keeps them current until ctx
// ends. Until they have synced, IssueCertificate and RenewCertificate are
// answered UNAVAILABLE. It returns an error only when ctx ended first.
func (s *Service) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return fmt.Errorf("bootstrap: Run called twice")
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, inf := range s.caches.informers {
		wg.Go(func() { inf.Run(ctx.Done()) })
	}
	synced := make([]cache.InformerSynced, 0, len(s.caches.informers))
	for _, inf := range s.caches.informers {
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("bootstrap: caches did not sync: %w", context.Cause(ctx))
	}
	s.log.Debug("bootstrap caches synced")
	close(s.synced)
	<-ctx.Done()
	return nil
}

// Synced is closed once Run has filled the caches.
func (s *Service) Synced() <-chan struct{} { return s.synced }

// useRecord returns who consumed token id, from the cache.
func (c *caches) useRecord(id string) (node, at string, used bool) {
	cm, err := c.uses.ConfigMaps(c.namespace).Get(UseRecordName(id))
	if err != nil {
		return "", "", false
	}
	return cm.Data["node"], cm.Data["usedAt"], true
}

// recordUse consumes token id for node: AlreadyExists when another join
// consumed it first.
func (s *Service) recordUse(ctx context.Context, tok *Token, node string) error {
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name: UseRecordName(tok.ID), Namespace: s.cfg.Namespace,
			Labels: map[string]string{UseRecordLabel: "true", "app.kubernetes.io/managed-by": "edgesync"},
		},
		Data: map[string]string{"tokenID": tok.ID, "node": node, "usedAt": time.Now().UTC().Format(time.RFC3339)},
	}
	_, err := s.cfg.Client.CoreV1().ConfigMaps(s.cfg.Namespace).Create(ctx, cm, metav1.CreateOptions{FieldManager: "edgesync-server"})
	return err
}
