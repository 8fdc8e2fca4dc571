package router

import (
	"context"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// statusLoop writes the counters gathered since the last write into each
// Rule's status every StatusInterval, and once more when ctx ends.
func (r *Router) statusLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			r.writeStatus(flush)
			cancel()
			return
		case <-t.C:
			r.writeStatus(ctx)
		}
	}
}

// writeStatus adds the gathered counters to each Rule's status. KubeEdge's
// Rule has no status subresource, so the Rule itself is updated; a
// conflict keeps the counts for the next round. Several replicas each add
// their own.
func (r *Router) writeStatus(ctx context.Context) {
	r.statusMu.Lock()
	counts := r.counts
	r.counts = map[ruleKey]*counter{}
	r.statusMu.Unlock()
	for k, c := range counts {
		err := r.addStatus(ctx, k, c)
		switch {
		case err == nil, apierrors.IsNotFound(err):
		default:
			if !apierrors.IsConflict(err) {
				r.log.Warn("could not write Rule status", zap.Stringer("rule", k), zap.Error(err))
			}
			r.statusMu.Lock()
			if cur := r.counts[k]; cur != nil {
				c.success += cur.success
				c.fail += cur.fail
				c.errors = append(c.errors, cur.errors...)
				if len(c.errors) > maxErrors {
					c.errors = c.errors[len(c.errors)-maxErrors:]
				}
			}
			r.counts[k] = c
			r.statusMu.Unlock()
		}
	}
}

func (r *Router) addStatus(ctx context.Context, k ruleKey, c *counter) error {
	rules := r.cfg.Dynamic.Resource(Rules).Namespace(k.namespace)
	u, err := rules.Get(ctx, k.name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	succ, _, _ := unstructured.NestedInt64(u.Object, "status", "successMessages")
	fail, _, _ := unstructured.NestedInt64(u.Object, "status", "failMessages")
	errs, _, _ := unstructured.NestedStringSlice(u.Object, "status", "errors")
	errs = append(errs, c.errors...)
	if len(errs) > maxErrors {
		errs = errs[len(errs)-maxErrors:]
	}
	errList := make([]any, len(errs))
	for i, e := range errs {
		errList[i] = e
	}
	status := map[string]any{"successMessages": succ + c.success, "failMessages": fail + c.fail, "errors": errList}
	if err := unstructured.SetNestedField(u.Object, status, "status"); err != nil {
		return err
	}
	_, err = rules.Update(ctx, u, metav1.UpdateOptions{FieldManager: "edgesync-router"})
	return err
}
