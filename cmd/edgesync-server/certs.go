package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgesync/edgesync/server/bootstrap"
	"github.com/edgesync/edgesync/server/pki"
)

func init() { subcommands = append(subcommands, newCertsCommand) }

// newCertsCommand builds `edgesync-server certs`, which makes the PKI an
// installation needs without openssl: a CA with the server's certificate,
// then one certificate per edge node and per operator.
func newCertsCommand() *cobra.Command {
	var dir string
	var force bool
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Create the CA, server, node and admin certificates edgesync uses",
		Long: `Create the certificates edgesync runs on, in one directory (--dir):

  ca.crt, ca.key              the certificate authority (keep ca.key secret)
  server.crt, server.key      the server's serving certificate
  node-NAME.crt, .key         an edge node's client certificate (CN system:node:NAME)
  admin-NAME.crt, .key        an operator's client certificate (O edgesync:admins)

Keys are written with mode 0600. Existing files are never replaced unless --force is given.`,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", "pki", "directory holding ca.crt and ca.key, where new files are written")
	cmd.PersistentFlags().BoolVar(&force, "force", false, "replace existing files")

	var (
		hosts                      []string
		kube                       bool
		kubeconfig, ns, secretName string
	)
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create a CA and a server certificate for --hosts",
		Long: `Create a CA and a server certificate for --hosts. With --kube the CA's key is
not written to --dir: the CA goes into a kubernetes.io/tls Secret (--secret in
--namespace) through the API server, where the server reads it to sign the
certificates of joining nodes (bootstrap.caSecret).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.NewCA("edgesync-ca")
			if err != nil {
				return err
			}
			server, err := ca.IssueServer(hosts)
			if err != nil {
				return err
			}
			if kube {
				if err := createCASecret(cmd.Context(), kubeconfig, ca, ns, secretName); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "created Secret %s/%s holding the CA (set bootstrap.caSecret: %s)\n", ns, secretName, secretName)
				caFile := filepath.Join(dir, "ca.crt")
				if err := writeCert(caFile, ca.CertPEM, force); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", caFile)
			} else if err := writePair(cmd.OutOrStdout(), ca.KeyPair(), dir, "ca", force); err != nil {
				return err
			}
			return writePair(cmd.OutOrStdout(), server, dir, "server", force)
		},
	}
	initCmd.Flags().StringSliceVar(&hosts, "hosts", []string{"localhost", "127.0.0.1"}, "DNS names and IP addresses edges use to reach the server")
	cmd.PersistentFlags().BoolVar(&kube, "kube", false, "the CA is kept in a Kubernetes Secret instead of ca.key (init creates it)")
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file, with --kube (default: $KUBECONFIG or ~/.kube/config)")
	cmd.PersistentFlags().StringVar(&ns, "namespace", "edgesync-system", "namespace of the CA Secret, with --kube (the server's)")
	cmd.PersistentFlags().StringVar(&secretName, "secret", "edgesync-ca", "name of the CA Secret, with --kube")
	loadCA := func(cmd *cobra.Command) (*pki.CA, error) {
		if !kube {
			ca, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
			if err != nil {
				return nil, fmt.Errorf("%w (create a CA first with `edgesync-server certs init --dir %s`, or pass --kube if it is in a Secret)", err, dir)
			}
			return ca, nil
		}
		c, err := kubeClient(kubeconfig, "edgesync-server certs")
		if err != nil {
			return nil, err
		}
		return bootstrap.SecretCA(c, ns, secretName)(cmd.Context())
	}

	nodeCmd := &cobra.Command{
		Use:   "node NAME",
		Short: "Create the client certificate of edge node NAME",
		Args:  exactlyOneName("node"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return issueWith(cmd, loadCA, dir, "node-"+args[0], force, func(ca *pki.CA) (*pki.KeyPair, error) {
				return ca.IssueNode(args[0])
			})
		},
	}
	adminCmd := &cobra.Command{
		Use:   "admin NAME",
		Short: "Create an operator's client certificate for AdminService",
		Args:  exactlyOneName("admin"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return issueWith(cmd, loadCA, dir, "admin-"+args[0], force, func(ca *pki.CA) (*pki.KeyPair, error) {
				return ca.IssueAdmin(args[0])
			})
		},
	}
	cmd.AddCommand(initCmd, nodeCmd, adminCmd)
	return cmd
}

func exactlyOneName(what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != 1 || strings.TrimSpace(args[0]) == "" {
			return fmt.Errorf("give exactly one %s name, for example: edgesync-server certs %s edge-1", what, what)
		}
		return nil
	}
}

func issueWith(cmd *cobra.Command, loadCA func(*cobra.Command) (*pki.CA, error), dir, base string, force bool, issue func(*pki.CA) (*pki.KeyPair, error)) error {
	ca, err := loadCA(cmd)
	if err != nil {
		return err
	}
	pair, err := issue(ca)
	if err != nil {
		return err
	}
	return writePair(cmd.OutOrStdout(), pair, dir, base, force)
}

func writePair(out io.Writer, pair *pki.KeyPair, dir, base string, force bool) error {
	certFile, keyFile := filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key")
	if err := pair.WriteFiles(certFile, keyFile, force); err != nil {
		if errors.Is(err, pki.ErrExists) {
			return fmt.Errorf("refusing to overwrite: %w", err)
		}
		return err
	}
	fmt.Fprintf(out, "wrote %s and %s\n", certFile, keyFile)
	return nil
}
