"""A cloud application sending messages to edge applications through
edgesync's router (KubeEdge Rules), in Python with the standard library only:
the router's REST port is plain HTTPS.

Usage: router_caller.py URL CA_FILE TOKEN_FILE BODY...

POSTs each BODY in turn to URL, https://<router>/<node>/<namespace>/<rule
path>, with the Kubernetes token in TOKEN_FILE as a bearer token (in a pod,
its ServiceAccount's: /var/run/secrets/kubernetes.io/serviceaccount/token),
trusting CA_FILE for the router's certificate. Prints one line per call: the
HTTP status, then the router's answer: {"id": ..., "status": "delivered"}
(the edge published it), "queued" (202: the node is offline, or slow), or
why it was refused (401, 403, 404, 503 with Retry-After).
"""
import ssl
import sys
import urllib.error
import urllib.request


def post(url, context, token, body):
    request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
        "Authorization": "Bearer " + token,
        "Content-Type": "application/json",
    })
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            return answer.status, answer.read().decode().strip()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode().strip()


def main():
    url, ca_file, token_file, bodies = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    context = ssl.create_default_context(cafile=ca_file)
    with open(token_file) as f:
        token = f.read().strip()
    for body in bodies:
        status, answer = post(url, context, token, body)
        print(status, answer, flush=True)


if __name__ == "__main__":
    main()
