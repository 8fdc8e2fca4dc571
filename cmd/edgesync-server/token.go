package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/edgesync/edgesync/server/bootstrap"
	"github.com/edgesync/edgesync/server/pki"
	"github.com/edgesync/edgesync/server/revocation"
)

func init() { subcommands = append(subcommands, newTokenCommand) }

// newTokenCommand builds `edgesync-server token`: bootstrap tokens that
// edge nodes join with (Secrets in kube-system), made through the API
// server with the operator's kubeconfig.
func newTokenCommand() *cobra.Command {
	var kubeconfig string
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and delete the bootstrap tokens edge nodes join with",
		Long: `Bootstrap tokens let an edge node join with one command: edgesync-agent join
sends the token and a certificate request, and the server signs the node's
certificate. Tokens are Kubernetes bootstrap token Secrets in kube-system
(the same as kubeadm's), with the group ` + bootstrap.Group + `.`,
	}
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	client := func() (kubernetes.Interface, error) { return kubeClient(kubeconfig, "edgesync-server token") }
	var namespace string
	cmd.PersistentFlags().StringVar(&namespace, "namespace", "edgesync-system", "the server's namespace (bootstrap.namespace): the CA Secret and the records of used tokens")

	var (
		opts     bootstrap.TokenOptions
		caFile   string
		caSecret string
		server   string
		joinDir  string
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a token and print it with the CA hash and the join command",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			var hash string
			if caFile != "" {
				hash, err = caHash(caFile)
			} else {
				hash, err = secretCAHash(cmd.Context(), c, namespace, caSecret)
			}
			if err != nil {
				return err
			}
			if opts.Node != "" {
				e, err := revocation.Current(cmd.Context(), c, namespace, opts.Node)
				if err != nil {
					return err
				}
				opts.NodeGeneration = e.Generation
			}
			token, tok, err := bootstrap.CreateToken(cmd.Context(), c, opts)
			if err != nil {
				return err
			}
			printJoin(cmd.OutOrStdout(), token, tok, hash, server, joinDir)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&opts.Node, "node", "", "bind the token to this node name")
	f.DurationVar(&opts.TTL, "ttl", time.Hour, "how long the token is valid (0: forever)")
	f.BoolVar(&opts.SingleUse, "single-use", true, "the token joins one node only (--single-use=false: any number of new nodes until it expires)")
	f.StringVar(&opts.Description, "description", "", "shown by token list")
	f.StringVar(&caFile, "ca", "", "the server's CA certificate file (tls.caFile), whose hash the node pins; default: the certificate in the CA Secret (--ca-secret)")
	f.StringVar(&caSecret, "ca-secret", "edgesync-ca", "Secret holding the server's CA (bootstrap.caSecret, as `certs init --kube` makes it), read when --ca is not given")
	f.StringVar(&server, "server", "", "address edges dial, host:port, for the printed join command")
	f.StringVar(&joinDir, "dir", "/var/lib/edgesync", "directory for the node's certificates, for the printed join command")

	list := &cobra.Command{
		Use:   "list",
		Short: "List bootstrap tokens (IDs only; secrets are never shown)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			tokens, err := bootstrap.ListTokens(cmd.Context(), c, namespace)
			if err != nil {
				return err
			}
			return printTokens(cmd.OutOrStdout(), tokens, time.Now())
		},
	}
	del := &cobra.Command{
		Use:   "delete ID...",
		Short: "Delete tokens by ID (the part before the dot) or whole token",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			var errs []error
			for _, id := range args {
				if err := bootstrap.DeleteToken(cmd.Context(), c, id); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deleted token %.6s\n", id)
			}
			return errors.Join(errs...)
		},
	}
	cmd.AddCommand(create, list, del)
	return cmd
}

// secretCAHash returns the hash of the CA certificate in the Secret the
// server signs with (tls.crt only: the key is not needed).
func secretCAHash(ctx context.Context, c kubernetes.Interface, namespace, name string) (string, error) {
	s, err := c.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read the CA from Secret %s/%s (give --ca FILE where the CA is a file): %w", namespace, name, err)
	}
	block, _ := pem.Decode(s.Data[corev1.TLSCertKey])
	if block == nil || block.Type != "CERTIFICATE" {
		return "", fmt.Errorf("Secret %s/%s holds no PEM certificate in %s", namespace, name, corev1.TLSCertKey)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("Secret %s/%s: %w", namespace, name, err)
	}
	return pki.CAHash(cert), nil
}

// caHash reads the first certificate of a PEM file and returns its hash.
func caHash(caFile string) (string, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return "", fmt.Errorf("read CA (--ca): %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", fmt.Errorf("--ca %s holds no PEM certificate", caFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("--ca %s: %w", caFile, err)
	}
	return pki.CAHash(cert), nil
}

func printJoin(out io.Writer, token string, tok *bootstrap.Token, hash, server, dir string) {
	if server == "" {
		server = "SERVER:PORT"
	}
	node := tok.Node
	if node == "" {
		node = "NODE_NAME"
	}
	fmt.Fprintf(out, "token:        %s\n", token)
	fmt.Fprintf(out, "ca-cert-hash: %s\n", hash)
	if !tok.Expires.IsZero() {
		fmt.Fprintf(out, "expires:      %s\n", tok.Expires.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(out, "\nOn the edge node:\n\n  edgesync-agent join --server %s --token %s \\\n    --ca-cert-hash %s --node %s --dir %s\n", server, token, hash, node, dir)
}

func printTokens(out io.Writer, tokens []*bootstrap.Token, now time.Time) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tTTL\tEXPIRES\tNODE\tSINGLE-USE\tUSED-BY\tEDGESYNC\tDESCRIPTION")
	for _, t := range tokens {
		ttl, expires := "<forever>", "<never>"
		if !t.Expires.IsZero() {
			expires = t.Expires.UTC().Format(time.RFC3339)
			ttl = "<expired>"
			if d := t.Expires.Sub(now); d > 0 {
				ttl = d.Round(time.Second).String()
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%t\t%s\t%t\t%s\n", t.ID, ttl, expires, dash(t.Node), t.SingleUse, dash(t.UsedBy), t.Joins(), t.Description)
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// kubeClient builds a clientset from kubeconfig (or the default loading
// rules when empty).
func kubeClient(kubeconfig, userAgent string) (kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = userAgent
	return kubernetes.NewForConfig(cfg)
}

// createCASecret stores ca in a kubernetes.io/tls Secret.
func createCASecret(ctx context.Context, kubeconfig string, ca *pki.CA, namespace, name string) error {
	c, err := kubeClient(kubeconfig, "edgesync-server certs")
	if err != nil {
		return err
	}
	if _, err := c.CoreV1().Secrets(namespace).Create(ctx, bootstrap.CASecret(ca, namespace, name), metav1.CreateOptions{FieldManager: "edgesync"}); err != nil {
		return fmt.Errorf("create CA Secret %s/%s: %w", namespace, name, err)
	}
	return nil
}

// writeCert writes a certificate file (0644), refusing to replace one
// unless force.
func writeCert(path string, certPEM []byte, force bool) error {
	if !force {
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("refusing to overwrite %s (pass --force to replace it)", path)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, certPEM, 0o644)
}
