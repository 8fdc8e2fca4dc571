package edgeclient_test

import (
	"context"
	"fmt"
	"log"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/edgeclient"
)

// An agent that reports every pod it receives as running.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	logger, _ := zap.NewProduction()

	var client *edgeclient.Client
	client, err := edgeclient.New(edgeclient.Config{
		Server:   "edgesync.example.com:8443",
		CAFile:   "/etc/edgesync/ca.crt",
		CertFile: "/etc/edgesync/node.crt",
		KeyFile:  "/etc/edgesync/node.key",
		NodeName: "edge-1",
		StoreDir: "/var/lib/edgesync",
		Logger:   logger,
		OnEvent: func(ctx context.Context, ev edgeclient.Event) error {
			fmt.Println(ev.Type, ev.Key, ev.ResourceVersion)
			if pod := ev.Object.Pod; pod != nil && ev.Type != edgeclient.Deleted {
				// Start the pod here; an error would Nack it.
				_, err := client.ReportPodStatus(pod.Namespace, pod.Name, string(pod.UID), &corev1.PodStatus{Phase: corev1.PodRunning})
				return err
			}
			return nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// Offline autonomy: what the node held when it last ran, before any
	// connection.
	pods, err := client.Pods()
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range pods {
		fmt.Println("holding", p.Namespace+"/"+p.Name)
	}

	if _, err := client.RegisterNode(edgeclient.NodeRegistration{Labels: map[string]string{"site": "factory-7"}}); err != nil {
		log.Fatal(err)
	}
	if err := client.Run(ctx); err != nil { // reconnects until ctx ends
		log.Fatal(err)
	}
}
