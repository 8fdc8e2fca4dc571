package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/edgesync/edgesync/server/bootstrap"
	"github.com/edgesync/edgesync/server/revocation"
)

func init() { subcommands = append(subcommands, newNodeCommand) }

// newNodeCommand builds `edgesync-server node`: what an operator does to an
// edge node's identity, through the API server with the operator's
// kubeconfig (AdminService.RevokeNode does the same over gRPC).
func newNodeCommand() *cobra.Command {
	var kubeconfig, namespace string
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Manage edge nodes' identities",
	}
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	cmd.PersistentFlags().StringVar(&namespace, "namespace", "edgesync-system", "the server's namespace (bootstrap.namespace), which holds the revocation record")
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a node: its certificates stop working on every replica, its session ends, its tokens are deleted",
		Long: `Revoke ends a node's identity. Every certificate the node holds is refused
at once by every replica (PERMISSION_DENIED), its session ends, and the
bootstrap tokens bound to it are deleted: it can join again only with a new
token (edgesync-server token create --node NAME). The Node and its pods stay.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			node := args[0]
			if errs := validation.IsDNS1123Subdomain(node); len(errs) > 0 {
				return fmt.Errorf("%q is not a node name: %s", node, strings.Join(errs, "; "))
			}
			c, err := kubeClient(kubeconfig, "edgesync-server node")
			if err != nil {
				return err
			}
			entry, err := revocation.Revoke(cmd.Context(), c, namespace, node)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked node %s (certificate generation %d) at %s\n", node, entry.Generation, entry.RevokedAt.Format(time.RFC3339))
			// Tokens made before the revocation no longer join the node
			// anyway (the server compares their creation time); deleting
			// them keeps `token list` honest.
			tokens, err := bootstrap.ListTokens(cmd.Context(), c, namespace)
			if err != nil {
				return fmt.Errorf("revoked, but cannot list its tokens: %w", err)
			}
			var errs []error
			for _, t := range tokens {
				if t.Node != node {
					continue
				}
				if err := bootstrap.DeleteToken(cmd.Context(), c, t.ID); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deleted token %s bound to node %s\n", t.ID, node)
			}
			return errors.Join(errs...)
		},
	}
	cmd.AddCommand(revoke)
	return cmd
}
