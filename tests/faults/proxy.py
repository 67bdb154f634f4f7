"""A fault-injecting proxy for the end-to-end harness, on 127.0.0.1: it stands
between a client (the operator) and the Kubernetes API server of the
end-to-end tests (tests/k8s) and fails the requests its rules choose, so that scenarios can check what the
operator does when the API misbehaves.

A rule matches a request by method, a regular expression on the path (with
the query), and optionally one on the body; it fires `times` times (or forever
when 0), each time with `probability` (a seeded random generator decides). Its
action is one of:

- an HTTP status: 500, 503, 429 (with Retry-After: 1), 409 (a Conflict Status);
- "reset": the connection is closed without an answer;
- "slow": the request is forwarded after `seconds`;
- "cut": the request is forwarded and the answer (a watch, say) is cut after
  its first chunk;
- "kill": the process whose pid is in `pidfile` is killed (SIGKILL) before the
  request is forwarded, and the connection is closed: the client dies at that
  step, its request never reaching the API.

Rules are replaced with `POST /__faults` (a JSON list), and `GET /__faults`
answers how often each fired. Everything else is forwarded as it is, streaming.

The client speaks plain http to the proxy on 127.0.0.1 and authenticates with
a bearer token, which the proxy passes on; the proxy speaks TLS to the API
server and checks its certificate against `--upstream-ca`.

Run: python tests/faults/proxy.py --upstream https://127.0.0.1:PORT --upstream-ca CA --port PORT
     [--seed N] [--ready-file PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import re
import signal
import ssl

import aiohttp
import aiohttp.web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


class Faults:
    def __init__(self, seed: int) -> None:
        self.rules: list[dict] = []
        self.fired: list[int] = []
        self.random = random.Random(seed)

    def set(self, rules: list[dict]) -> None:
        for r in rules:
            r["_path"] = re.compile(r.get("path", ".*"))
            r["_body"] = re.compile(r["body"]) if r.get("body") else None
        self.rules = rules
        self.fired = [0] * len(rules)

    def choose(self, method: str, path: str, body: bytes) -> dict | None:
        text = body.decode("utf-8", "replace")
        for i, r in enumerate(self.rules):
            if r.get("method", method) != method or not r["_path"].search(path):
                continue
            if r["_body"] is not None and not r["_body"].search(text):
                continue
            if r.get("times", 0) and self.fired[i] >= r["times"]:
                continue
            if self.random.random() >= r.get("probability", 1.0):
                continue
            self.fired[i] += 1
            return r
        return None


def status_body(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--upstream-ca", help="the CA that signed the upstream's certificate")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ready-file")
    args = parser.parse_args()
    faults = Faults(args.seed)
    tls = ssl.create_default_context(cafile=args.upstream_ca) if args.upstream_ca else None
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False,
                                    connector=aiohttp.TCPConnector(ssl=tls) if tls else None)

    async def control(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        if request.method == "POST":
            faults.set(await request.json())
        return aiohttp.web.json_response(
            [{"rule": {k: v for k, v in r.items() if not k.startswith("_")}, "fired": n}
             for r, n in zip(faults.rules, faults.fired)])

    async def forward(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        body = await request.read()
        rule = faults.choose(request.method, request.path_qs, body)
        action = rule.get("action") if rule else None
        if isinstance(action, int):
            reason = {409: "Conflict", 429: "TooManyRequests", 503: "ServiceUnavailable"}.get(action, "InternalError")
            headers = {"Retry-After": "1"} if action == 429 else {}
            return aiohttp.web.json_response(status_body(action, reason, f"injected fault {action}"),
                                             status=action, headers=headers)
        if action in ("reset", "kill"):
            if action == "kill":
                pid = int(pathlib.Path(rule["pidfile"]).read_text())
                os.killpg(pid, signal.SIGKILL)
            if request.transport is not None:
                request.transport.abort()
            return aiohttp.web.Response(status=500)  # never sent: the connection is gone
        if action == "slow":
            await asyncio.sleep(float(rule.get("seconds", 2)))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with session.request(request.method, args.upstream + request.path_qs, headers=headers,
                                   data=body if body else None) as upstream:
            response = aiohttp.web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
                if action == "cut":
                    if request.transport is not None:
                        request.transport.abort()
                    return response
            await response.write_eof()
            return response

    app = aiohttp.web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/__faults", control)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", args.port).start()
    if args.ready_file:
        pathlib.Path(args.ready_file).write_text("ready")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await session.close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
