"""A minimal edgesync edge agent in Python, built only from the generated
client (`make generate-python`): it dials over mTLS as its own node, says
Hello, registers the node, waits for a typed PodEvent for the pod it is told
about, then reports a NodeStatus and waits for the server's answer. Given a
SERVICE, it also waits for that Service (in NAMESPACE) and an EndpointSlice
of it, printing both. It also waits for a ServiceAccount token of the pod
(TokenEvent), printing where the pod mounts it but never the token. Given a
CONFIGMAP too, it subscribes in its Hello, as the pod's ServiceAccount
("default"), to the ConfigMaps of NAMESPACE named CONFIGMAP and waits for
that generic object (ResourceEvent, the object in JSON) and its
subscription's state (SubscriptionEvent), printing both.

Usage: edge_client.py ADDR CA CERT KEY NODE NAMESPACE POD KUBELET_VERSION [SERVICE [CONFIGMAP]]
Exit code 0 when every step succeeded; the steps are printed on stdout.
"""
import json
import queue
import sys

import grpc

from edgesync.v1 import sync_pb2, sync_pb2_grpc

TIMEOUT_SECONDS = 120


def main():
    addr, ca, cert, key, node, namespace, pod_name, kubelet_version = sys.argv[1:9]
    service_name = sys.argv[9] if len(sys.argv) > 9 else ""
    saw_service = not service_name
    saw_token = False
    configmap_name = sys.argv[10] if len(sys.argv) > 10 else ""
    saw_object = saw_resource = not configmap_name
    with open(ca, "rb") as f:
        ca_pem = f.read()
    with open(cert, "rb") as f:
        cert_pem = f.read()
    with open(key, "rb") as f:
        key_pem = f.read()
    credentials = grpc.ssl_channel_credentials(ca_pem, key_pem, cert_pem)
    channel = grpc.secure_channel(addr, credentials)
    stub = sync_pb2_grpc.SyncServiceStub(channel)

    outbox = queue.Queue()
    done = object()

    def requests():
        while True:
            item = outbox.get()
            if item is done:
                return
            yield item

    hello = sync_pb2.Hello(node_name=node, agent_version="python-edge/0.1")
    if configmap_name:
        hello.subscriptions.add(
            id="python-configmaps", service_account_namespace=namespace, service_account_name="default",
            group="", version="v1", resource="configmaps", namespace=namespace,
            field_selector=f"metadata.name={configmap_name}")
    outbox.put(sync_pb2.SyncRequest(hello=hello))
    registration = sync_pb2.SyncRequest(request_id=1)
    registration.node_registration.labels["example.com/client"] = "python"
    outbox.put(registration)

    answered = {}
    sent_status = False
    sent_status_accepted = False
    try:
        for response in stub.Sync(requests(), timeout=TIMEOUT_SECONDS):
            kind = response.WhichOneof("message")
            if kind == "welcome":
                print(f"welcome session={response.welcome.session_id} server={response.welcome.server_id} "
                      f"heartbeat={response.welcome.heartbeat_interval.seconds}s", flush=True)
            elif kind == "pod_event":
                pod = response.pod_event.pod
                print(f"pod_event {sync_pb2.EventType.Name(response.pod_event.type)} "
                      f"{pod.metadata.namespace}/{pod.metadata.name} image={pod.spec.containers[0].image}", flush=True)
                if pod.metadata.namespace == namespace and pod.metadata.name == pod_name and not sent_status:
                    status = sync_pb2.SyncRequest(request_id=2)
                    status.node_status.status.nodeInfo.kubeletVersion = kubelet_version
                    condition = status.node_status.status.conditions.add()
                    condition.type = "Ready"
                    condition.status = "True"
                    condition.reason = "PythonEdgeReady"
                    outbox.put(status)
                    sent_status = True
            elif kind == "service_event":
                svc = response.service_event.service
                print(f"service_event {sync_pb2.EventType.Name(response.service_event.type)} "
                      f"{svc.metadata.namespace}/{svc.metadata.name} clusterIP={svc.spec.clusterIP} "
                      f"ports={','.join(str(p.port) for p in svc.spec.ports)}", flush=True)
            elif kind == "endpoint_slice_event":
                eps = response.endpoint_slice_event.endpoint_slice
                addresses = [a for ep in eps.endpoints for a in ep.addresses]
                print(f"endpoint_slice_event {sync_pb2.EventType.Name(response.endpoint_slice_event.type)} "
                      f"{eps.metadata.namespace}/{eps.metadata.name} "
                      f"service={eps.metadata.labels['kubernetes.io/service-name']} endpoints={','.join(addresses)}", flush=True)
                # A slice follows its Service on the stream.
                if eps.metadata.namespace == namespace and eps.metadata.labels["kubernetes.io/service-name"] == service_name:
                    saw_service = True
            elif kind == "token_event":
                tok = response.token_event.token
                print(f"token_event {sync_pb2.EventType.Name(response.token_event.type)} "
                      f"{tok.metadata.namespace}/{tok.metadata.name} pod={tok.pod_name} volume={tok.volume_name} "
                      f"path={tok.path} serviceAccount={tok.service_account_name} "
                      f"audience={tok.audience or '(api server)'} bytes={len(tok.token)} "
                      f"expires={tok.expiration_time.seconds}", flush=True)
                if tok.metadata.namespace == namespace and tok.pod_name == pod_name and tok.token:
                    saw_token = True
            elif kind == "resource_event":
                ev = response.resource_event
                obj = json.loads(ev.object) if ev.object else {}
                print(f"resource_event {sync_pb2.EventType.Name(ev.type)} {ev.version}/{ev.resource} "
                      f"{ev.metadata.namespace}/{ev.metadata.name} kind={obj.get('kind')} "
                      f"data={json.dumps(obj.get('data', {}), sort_keys=True)}", flush=True)
                if ev.metadata.name == configmap_name and ev.type == sync_pb2.EVENT_TYPE_APPLY:
                    saw_object = True
            elif kind == "subscription_event":
                ev = response.subscription_event
                print(f"subscription_event {ev.metadata.name} {sync_pb2.SubscriptionState.Name(ev.state)} "
                      f"code={ev.code} {ev.message}", flush=True)
                if ev.state == sync_pb2.SUBSCRIPTION_STATE_ENDED:
                    print(f"subscription ended: {ev.message}", file=sys.stderr)
                    return 1
                # ACTIVE follows the objects the subscription covers.
                saw_resource = saw_object
            elif kind == "status_result":
                result = response.status_result
                answered[result.request_id] = result
                print(f"status_result id={result.request_id} code={result.code} {result.message}", flush=True)
                if result.code != 0:
                    print(f"report {result.request_id} failed", file=sys.stderr)
                    return 1
                if 1 in answered and 2 in answered and not sent_status_accepted:
                    print("node status accepted", flush=True)
                    sent_status_accepted = True
            elif kind == "sync_complete":
                print(f"sync_complete sent={response.sync_complete.objects_sent}", flush=True)
            outbox.put(sync_pb2.SyncRequest(ack=sync_pb2.Ack(sequence=response.sequence)))
            if sent_status_accepted and saw_service and saw_token and saw_resource:
                return 0
    except grpc.RpcError as err:
        print(f"stream ended: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    finally:
        outbox.put(done)
        channel.close()
    print("stream ended before the node status was answered", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
