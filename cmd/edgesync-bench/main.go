// Command edgesync-bench measures edgesync against the goals of its
// performance issue: session density, fan-out latency, throughput against a
// raw grpc-go stream, encode-once CPU, a reconnect storm and heartbeats; with
// a devcluster, also through the real controllers and a kube-apiserver, the
// failover of one of three replicas (scenario 8), and KubeEdge's router:
// REST calls routed to MQTT on the edges through a real mosquitto
// (scenario 10).
//
// It runs the server under test as a child process of itself (so that the
// server's memory and CPU are measured apart from the simulated edges), with
// in-memory controllers and a small control endpoint the benchmark drives,
// and simulates the edges in its own process, each a real mutual-TLS
// connection with its own node certificate.
//
//	edgesync-bench run --scale reduced --out .tmp/bench
//	edgesync-bench run --scale full --out .tmp/bench-full
//
// `edgesync-bench portforward` transfers 100 MB with kubectl port-forward
// from an edge host's loopback through the apiserver, edgesync-server's
// kubelet endpoint and a tunnel, and reports MB/s and the server's RSS.
//
// `edgesync-bench serve` is the child; it is not meant to be run by hand.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// A second signal exits at once.
		<-ctx.Done()
		stop()
	}()
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runMain(ctx, os.Args[2:])
	case "serve":
		err = serveMain(ctx, os.Args[2:])
	case "table":
		err = tableMain(os.Args[2:])
	case "portforward":
		err = portForwardMain(ctx, os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "edgesync-bench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  edgesync-bench run [--scale smoke|reduced|full] [--out DIR] [--scenarios 1,2,3,4,5,6,7,8,9,10]
  edgesync-bench table RESULTS.json   (print the goal table of an earlier run)
  edgesync-bench portforward [--mb 100] [--out DIR]   (kubectl port-forward to an edge pod: MB/s, server RSS)
  edgesync-bench serve ...   (the server process the benchmark starts)

Run "edgesync-bench run -h" for every flag.`)
}
