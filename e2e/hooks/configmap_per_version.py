#!/usr/bin/env python3
"""A Metacontroller CompositeController sync hook, written as one would for Metacontroller:
for an Application parent, one ConfigMap per version holding its image.

It serves on 127.0.0.1 at a free port, printed as the first line of its output. The parent's
annotation `hooks.orrery.dev/mode` makes it misbehave on purpose:
  secret      - also returns a Secret (a kind the parent did not declare)
  elsewhere   - puts its ConfigMap in namespace kube-system
  garbage     - answers a JSON string instead of a sync response
  error       - answers HTTP 500
  slow        - answers after 3 seconds
Finalizing: returns no children, and `finalized: true` once none of its ConfigMaps is left.
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def sync(request):
    parent = request["parent"]
    name = parent["metadata"]["name"]
    mode = parent["metadata"].get("annotations", {}).get("hooks.orrery.dev/mode", "")
    observed = request["children"].get("ConfigMap.v1", {})
    if request.get("finalizing"):
        return {"children": [], "finalized": len(observed) == 0}
    children = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-{version['name']}"},
            "data": {"image": version["image"]},
        }
        for version in parent["spec"]["versions"]
    ]
    if mode == "secret":
        children.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-token"}})
    if mode == "elsewhere":
        children[0]["metadata"]["namespace"] = "kube-system"
    made = sum(1 for child in children if child["metadata"]["name"] in observed)
    ready = made == len(children)
    return {
        "status": {
            "versions": len(children),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "AllMade" if ready else "Making",
                    "message": f"{made} of {len(children)} ConfigMaps made",
                }
            ],
        },
        "children": children,
    }


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = request["parent"]["metadata"].get("annotations", {}).get("hooks.orrery.dev/mode", "")
        if mode == "slow":
            time.sleep(3)
        if mode == "error":
            self.send_response(500)
            self.end_headers()
            return
        answer = "not a sync response" if mode == "garbage" else sync(request)
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
print(server.server_address[1], flush=True)
sys.stdout.close()
server.serve_forever()
