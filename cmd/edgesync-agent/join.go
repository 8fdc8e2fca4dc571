package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/edgesync/edgesync/edgeclient"
)

// newJoinCommand builds `edgesync-agent join`: the node gets its
// certificate with a bootstrap token, its key never leaving it.
func newJoinCommand() *cobra.Command {
	var (
		cfg      edgeclient.JoinConfig
		logLevel string
	)
	cmd := &cobra.Command{
		Use:   "join --server HOST:PORT --token TOKEN --ca-cert-hash sha256:HASH --node NAME --dir DIR",
		Short: "Join the cluster with a bootstrap token: get the node's certificate into --dir",
		Long: `Join fetches the CA from the server and checks it against --ca-cert-hash
before it sends anything else (as kubeadm join does), generates the node's
private key locally, has the server sign a certificate for it with the
bootstrap token, and writes ca.crt, node.crt and node.key (mode 0600) into
--dir. Then start the agent with:

  edgesync-agent run --server HOST:PORT --node NAME --dir DIR --store STORE

Tokens and hashes come from ` + "`edgesync-server token create`.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck // nothing to do about it at exit
			cfg.Logger = log
			joined, err := edgeclient.Join(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s joined: certificate valid until %s, files in %s\n",
				cfg.NodeName, joined.NotAfter.Format("2006-01-02 15:04:05 MST"), cfg.Dir)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Server, "server", "", "edgesync server address, host:port")
	f.StringVar(&cfg.Token, "token", "", "bootstrap token, as edgesync-server token create printed it")
	f.StringVar(&cfg.CACertHash, "ca-cert-hash", "", "hash of the cluster's CA, sha256:<hex>, as edgesync-server token create printed it")
	f.StringVar(&cfg.NodeName, "node", "", "node name to join as")
	f.StringVar(&cfg.Dir, "dir", "", "directory for ca.crt, node.crt and node.key")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	for _, name := range []string{"server", "token", "ca-cert-hash", "node", "dir"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// newRunCommand builds `edgesync-agent run`: the root command's agent
// with the files join wrote (--dir instead of --ca, --cert and --key),
// renewing the certificate before it expires. It takes every other flag of
// root, bound to the same variables, and runs root's RunE; call it once
// root's flags are registered.
func newRunCommand(root *cobra.Command, c *edgeclient.Config) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "run --server HOST:PORT --node NAME --dir DIR --store STORE",
		Short: "Run the agent with the certificate `join` wrote into --dir, renewing it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c.CAFile = filepath.Join(dir, edgeclient.CAFileName)
			c.CertFile = filepath.Join(dir, edgeclient.CertFileName)
			c.KeyFile = filepath.Join(dir, edgeclient.KeyFileName)
			c.RenewCertificates = true
			return root.RunE(cmd, args)
		},
	}
	root.Flags().VisitAll(func(f *pflag.Flag) {
		switch f.Name {
		case "ca", "cert", "key":
			return
		}
		shared := *f
		shared.Annotations = nil // root's required flags are not run's
		cmd.Flags().AddFlag(&shared)
	})
	cmd.Flags().StringVar(&dir, "dir", "", "directory join wrote ca.crt, node.crt and node.key into (renewed certificates replace them)")
	for _, name := range []string{"server", "node", "dir", "store"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}
