// A minimal edgesync edge agent in TypeScript, built only from the client
// generated from api/ (buf.gen.ts.yaml, `make generate-ts`): it dials the
// server over gRPC (HTTP/2) with mTLS as its own node, says Hello,
// registers the node, waits for a typed PodEvent for the pod it is told
// about and reads its image as pod.spec.containers[0].image, then reports a
// NodeStatus and waits for the server's answer.
//
// Usage: node dist/edge_client.js ADDR CA CERT KEY NODE NAMESPACE POD KUBELET_VERSION
// Exit code 0 when every step succeeded; the steps are printed on stdout.

import { readFileSync } from "node:fs";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  EventType,
  SyncRequestSchema,
  SyncService,
  type SyncRequest,
} from "./gen/edgesync/v1/sync_pb.js";
import {
  NodeConditionSchema,
  NodeStatusSchema as KubeNodeStatusSchema,
  NodeSystemInfoSchema,
} from "./gen/k8s.io/api/core/v1/generated_pb.js";

const TIMEOUT_MS = 120_000;

// Outbox is the request side of the stream: reports are pushed as they
// are made and the stream reads them in order until close.
class Outbox implements AsyncIterable<SyncRequest> {
  private queue: SyncRequest[] = [];
  private wake: (() => void) | undefined;
  private closed = false;

  push(req: SyncRequest): void {
    this.queue.push(req);
    this.wake?.();
  }

  close(): void {
    this.closed = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<SyncRequest> {
    for (;;) {
      const next = this.queue.shift();
      if (next !== undefined) {
        yield next;
        continue;
      }
      if (this.closed) {
        return;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

async function main(argv: string[]): Promise<number> {
  if (argv.length !== 8) {
    console.error("usage: edge_client.js ADDR CA CERT KEY NODE NAMESPACE POD KUBELET_VERSION");
    return 2;
  }
  const [addr, ca, cert, key, node, namespace, podName, kubeletVersion] = argv;
  const transport = createGrpcTransport({
    baseUrl: `https://${addr}`,
    nodeOptions: { ca: readFileSync(ca), cert: readFileSync(cert), key: readFileSync(key) },
  });
  const client = createClient(SyncService, transport);

  const outbox = new Outbox();
  outbox.push(create(SyncRequestSchema, {
    message: { case: "hello", value: { nodeName: node, agentVersion: "typescript-edge/0.1" } },
  }));
  outbox.push(create(SyncRequestSchema, {
    requestId: 1n,
    message: { case: "nodeRegistration", value: { labels: { "example.com/client": "typescript" } } },
  }));

  const answered = new Set<bigint>();
  let sentStatus = false;
  try {
    for await (const response of client.sync(outbox, { timeoutMs: TIMEOUT_MS })) {
      const m = response.message;
      switch (m.case) {
        case "welcome":
          console.log(`welcome session=${m.value.sessionId} server=${m.value.serverId} ` +
            `heartbeat=${m.value.heartbeatInterval?.seconds ?? 0n}s`);
          break;
        case "podEvent": {
          const pod = m.value.pod;
          const meta = pod?.metadata;
          console.log(`pod_event ${EventType[m.value.type]} ${meta?.namespace}/${meta?.name} ` +
            `image=${pod?.spec?.containers[0]?.image}`);
          if (meta?.namespace === namespace && meta?.name === podName && !sentStatus) {
            outbox.push(create(SyncRequestSchema, {
              requestId: 2n,
              message: {
                case: "nodeStatus",
                value: {
                  status: create(KubeNodeStatusSchema, {
                    nodeInfo: create(NodeSystemInfoSchema, { kubeletVersion }),
                    conditions: [create(NodeConditionSchema, { type: "Ready", status: "True", reason: "TypeScriptEdgeReady" })],
                  }),
                },
              },
            }));
            sentStatus = true;
          }
          break;
        }
        case "statusResult": {
          const result = m.value;
          answered.add(result.requestId);
          console.log(`status_result id=${result.requestId} code=${result.code} ${result.message}`);
          if (result.code !== 0) {
            console.error(`report ${result.requestId} failed`);
            return 1;
          }
          if (answered.has(1n) && answered.has(2n)) {
            console.log("node status accepted");
            return 0;
          }
          break;
        }
        case "syncComplete":
          console.log(`sync_complete sent=${m.value.objectsSent}`);
          break;
      }
      outbox.push(create(SyncRequestSchema, { message: { case: "ack", value: { sequence: response.sequence } } }));
    }
  } catch (err) {
    const e = ConnectError.from(err);
    console.error(`stream ended: ${Code[e.code]}: ${e.rawMessage}`);
    return 1;
  } finally {
    outbox.close();
  }
  console.error("stream ended before the node status was answered");
  return 1;
}

// Exit at once: the HTTP/2 session would otherwise keep the process alive
// (stdout is a pipe or file, written synchronously).
process.exit(await main(process.argv.slice(2)));
