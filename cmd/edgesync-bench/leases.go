package main

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/controllers/nodestatus"
	"github.com/edgesync/edgesync/internal/bench/cluster"
)

// staleLeases lists the node Leases and counts the nodes among names whose
// Lease is missing or was renewed longer than its duration before now: a
// Lease the node lifecycle controller would call lapsed.
func staleLeases(ctx context.Context, cl *cluster.Cluster, names []string, now time.Time) (int, error) {
	list, err := cl.Client.CoordinationV1().Leases(nodestatus.LeaseNamespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return 0, fmt.Errorf("list node Leases: %w", err)
	}
	fresh := make(map[string]bool, len(list.Items))
	for _, l := range list.Items {
		s := l.Spec
		if s.RenewTime != nil && s.LeaseDurationSeconds != nil &&
			now.Sub(s.RenewTime.Time) <= time.Duration(*s.LeaseDurationSeconds)*time.Second {
			fresh[l.Name] = true
		}
	}
	stale := 0
	for _, n := range names {
		if !fresh[n] {
			stale++
		}
	}
	return stale, nil
}

func (s kubeSettings) String() string {
	which := "the product's defaults"
	if !s.Defaults {
		which = "overridden by --kube-* flags"
	}
	return fmt.Sprintf("heartbeats every %s, Lease duration %s, renew interval %s, Lease QPS %g (burst %d), controllers QPS %g (burst %d): %s",
		s.HeartbeatInterval, s.LeaseDuration, s.LeaseRenewInterval, s.LeaseQPS, s.LeaseBurst, s.QPS, s.Burst, which)
}
