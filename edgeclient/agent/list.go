package agent

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// List prints what store s holds, like kubectl get.
func List(w io.Writer, s store.Store, now time.Time) error {
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
		details := Describe(obj, nil)
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
