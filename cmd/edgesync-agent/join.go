package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/agent"
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
	f.StringVar(&cfg.Token, "token", "", "bootstrap token, from `edgesync-server token create`")
	f.StringVar(&cfg.CACertHash, "ca-cert-hash", "", "hash of the cluster's CA, sha256:<hex>, from `edgesync-server token create`")
	f.StringVar(&cfg.NodeName, "node", "", "node name to join as")
	f.StringVar(&cfg.Dir, "dir", "", "directory for ca.crt, node.crt and node.key")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	for _, name := range []string{"server", "token", "ca-cert-hash", "node", "dir"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// newRunCommand builds `edgesync-agent run`: the agent with the files join
// wrote, renewing the certificate before it expires.
func newRunCommand(version string) *cobra.Command {
	var (
		cfg      = agent.Config{Version: version}
		c        = &cfg.Client
		dir      string
		logLevel string
	)
	cmd := &cobra.Command{
		Use:   "run --server HOST:PORT --node NAME --dir DIR --store STORE",
		Short: "Run the agent with the certificate `join` wrote into --dir, renewing it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck // nothing to do about it at exit
			c.CAFile = filepath.Join(dir, edgeclient.CAFileName)
			c.CertFile = filepath.Join(dir, edgeclient.CertFileName)
			c.KeyFile = filepath.Join(dir, edgeclient.KeyFileName)
			c.RenewCertificates = true
			c.Logger, cfg.Out = log, cmd.OutOrStdout()
			return agent.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Server, "server", "", "edgesync server address, host:port")
	f.StringVar(&c.NodeName, "node", "", "node name, as joined")
	f.StringVar(&dir, "dir", "", "directory `join` wrote ca.crt, node.crt and node.key into (renewed certificates replace them)")
	f.StringVar(&c.StoreDir, "store", "", "directory of the local object store")
	f.StringToStringVar(&cfg.Labels, "labels", nil, "labels of the Node when it is registered, k=v,...")
	f.DurationVar(&c.Backoff.Initial, "backoff-initial", 0, "cap of the first reconnect delay (default 500ms)")
	f.DurationVar(&c.Backoff.Max, "backoff-max", 0, "cap of every reconnect delay (default 30s)")
	f.DurationVar(&cfg.StatusInterval, "node-status-interval", agent.DefaultStatusInterval, "how often the node status is checked; it is sent only when it changed")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	for _, name := range []string{"server", "node", "dir", "store"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}
