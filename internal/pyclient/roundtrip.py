"""Round-trips a PodEvent between Go and the generated Python client.

Reads a hex-encoded edgesync.v1.SyncResponse (made by Go) on stdin, checks it
through the typed Python API, then writes a hex-encoded SyncResponse that
Python built itself on stdout, for Go to decode.
"""
import sys

from edgesync.v1 import sync_pb2


def main():
    data = bytes.fromhex(sys.stdin.read().strip())
    got = sync_pb2.SyncResponse()
    got.ParseFromString(data)
    assert got.WhichOneof("message") == "pod_event", got.WhichOneof("message")
    assert got.pod_event.type == sync_pb2.EVENT_TYPE_APPLY
    pod = got.pod_event.pod
    print(f"python read {pod.metadata.namespace}/{pod.metadata.name} "
          f"image={pod.spec.containers[0].image} sequence={got.sequence}", file=sys.stderr)

    reply = sync_pb2.SyncResponse(sequence=got.sequence + 1)
    reply.pod_event.type = sync_pb2.EVENT_TYPE_APPLY
    reply.pod_event.pod.metadata.name = pod.metadata.name + "-from-python"
    reply.pod_event.pod.metadata.namespace = pod.metadata.namespace
    container = reply.pod_event.pod.spec.containers.add()
    container.name = "app"
    container.image = pod.spec.containers[0].image.replace(":1", ":2")
    reply.pod_event.pod.spec.nodeName = pod.spec.nodeName
    sys.stdout.write(reply.SerializeToString().hex())


if __name__ == "__main__":
    main()
