// Command edgesync-server runs the edgesync sync server: the Kubernetes
// controllers and the gRPC server edge nodes connect to.
//
//	edgesync-server --config /etc/edgesync/server.yaml
//	edgesync-server --print-default-config
//
// SIGTERM or SIGINT stops it gracefully (edges are told to dial again,
// connections drain within drainTimeout); a second signal exits at once.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signalContext()
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "edgesync-server:", err)
		os.Exit(1)
	}
}

// signalContext ends on the first SIGINT or SIGTERM; a second one exits the
// process at once.
func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-signals
		fmt.Fprintf(os.Stderr, "edgesync-server: %s: shutting down (again to exit at once)\n", sig)
		cancel()
		<-signals
		os.Exit(1)
	}()
	return ctx, cancel
}
