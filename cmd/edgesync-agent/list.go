package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/duration"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

func newListCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "list --store DIR",
		Short: "Print what the local store holds, like kubectl get",
		Long: "Print every object the local store holds. The store is opened read-only; " +
			"while an agent runs on it, stop the agent first (bbolt allows one writer and no concurrent readers from other processes).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := store.Open(dir, store.Options{ReadOnly: true})
			if err != nil {
				return err
			}
			defer s.Close()
			return list(cmd.OutOrStdout(), s, time.Now())
		},
	}
	cmd.Flags().StringVar(&dir, "store", "", "directory of the local object store (required)")
	_ = cmd.MarkFlagRequired("store")
	return cmd
}

func list(w io.Writer, s store.Store, now time.Time) error {
	recs, err := s.List(edgesyncv1.Kind_KIND_UNSPECIFIED)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAMESPACE\tNAME\tRESOURCE VERSION\tAGE\tDETAILS")
	for _, r := range recs {
		obj, err := edgeclient.Decode(r)
		if err != nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\t<unreadable: %v>\n", store.KindName(r.Key.Kind), r.Key.Namespace, r.Key.Name, r.ResourceVersion, err)
			continue
		}
		kind, meta := kindMeta(obj)
		age := "<unknown>"
		if !meta.CreationTimestamp.IsZero() {
			age = duration.HumanDuration(now.Sub(meta.CreationTimestamp.Time))
		}
		details := describe(obj, nil)
		if obj.Pod != nil && obj.Pod.DeletionTimestamp != nil && !strings.Contains(details, "terminating") {
			details += " terminating"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", kind, r.Key.Namespace, r.Key.Name, r.ResourceVersion, age, details)
	}
	if len(recs) == 0 {
		fmt.Fprintln(tw, "(the store is empty)")
	}
	return tw.Flush()
}
