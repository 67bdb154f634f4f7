"""A test kubelet: runs the Pods of a Kubernetes API as local processes.

It watches Pods in every namespace; for each new Pod it resolves the container's
environment (values, the downward API, Secret and ConfigMap keys), writes a
kubeconfig holding a token for the Pod's ServiceAccount (the process finds it
through KUBECONFIG, as kube-rs and client-go do), maps the container's command
to a local executable, and runs it. It writes the Pod's phase and container
state back through the status subresource: Running, then Succeeded or Failed
with the exit code, the reason (Completed, Error, DeadlineExceeded) and, for a
failure, the end of the log as the termination message (the
FallbackToLogsOnError policy). activeDeadlineSeconds is enforced by killing the
process; a Pod deleted while running has its process stopped.

Projected ServiceAccount tokens with an audience (the runs' tokens for their
clouds and for Vault) are minted as the real kubelet has the API server mint
them: JWTs signed by this node's issuer key (Ed25519; its public key in
`issuer.pub`, for the services that trust the cluster's tokens), with the Pod's
ServiceAccount as subject, the audience and the expiry the volume asks for.
There is no mount namespace: each such volume is a folder under
`volumes/<namespace>_<pod>/`, and environment values naming a file under its
mount path are pointed there.

Images are not pulled and nothing is isolated: the security context, other
volumes and resources are recorded by the API for tests to check, not enforced
here.

Run: python tests/kubelet/kubelet.py --server URL --command /job-runner=PATH --workdir DIR

The workdir holds `logs/<namespace>_<pod>.log`, `pids/<namespace>_<pod>.pid`
(for tests that kill a runner) and the per-Pod kubeconfigs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import pathlib
import secrets
import signal
import sys

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TERMINATION_LOG_LINES = 80
ISSUER = "https://kubernetes.default.svc"


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    def __init__(self, server: str, commands: dict[str, str], workdir: pathlib.Path, node: str) -> None:
        self.server = server.rstrip("/")
        self.commands = commands
        self.workdir = workdir
        self.node = node
        self.running: dict[tuple[str, str], asyncio.Task] = {}
        self.procs: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self.tokens: dict[tuple[str, str], str] = {}
        for sub in ("logs", "pids", "kubeconfigs", "volumes"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self.issuer_key = Ed25519PrivateKey.generate()
        (workdir / "issuer.pub").write_bytes(self.issuer_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    # -- API --

    async def get(self, http: aiohttp.ClientSession, path: str) -> dict | None:
        async with http.get(self.server + path) as r:
            if r.status == 404:
                return None
            r.raise_for_status()
            return await r.json()

    async def patch_status(self, http: aiohttp.ClientSession, ns: str, name: str, status: dict) -> None:
        async with http.patch(
            f"{self.server}/api/v1/namespaces/{ns}/pods/{name}/status?fieldManager=kubelet",
            data=json.dumps({"status": status}),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as r:
            if r.status not in (200, 404):
                print(f"kubelet: status of {ns}/{name}: HTTP {r.status} {await r.text()}", file=sys.stderr)

    # -- pods --

    async def env(self, http: aiohttp.ClientSession, pod: dict, container: dict) -> dict[str, str]:
        ns, meta = pod["metadata"]["namespace"], pod["metadata"]
        out: dict[str, str] = {}
        for e in container.get("env") or []:
            if "value" in e:
                out[e["name"]] = e["value"]
                continue
            src = e.get("valueFrom") or {}
            if "fieldRef" in src:
                path = src["fieldRef"]["fieldPath"]
                value: object = {"metadata.namespace": ns, "metadata.name": meta["name"],
                                 "metadata.uid": meta.get("uid"), "spec.nodeName": self.node,
                                 "spec.serviceAccountName": pod["spec"].get("serviceAccountName")}.get(path)
                if value is None and path.startswith("metadata.labels['"):
                    value = (meta.get("labels") or {}).get(path[len("metadata.labels['"):-2])
                if value is not None:
                    out[e["name"]] = str(value)
            elif "secretKeyRef" in src or "configMapKeyRef" in src:
                ref = src.get("secretKeyRef") or src["configMapKeyRef"]
                plural = "secrets" if "secretKeyRef" in src else "configmaps"
                obj = await self.get(http, f"/api/v1/namespaces/{ns}/{plural}/{ref['name']}")
                data = (obj or {}).get("data") or {}
                if ref["key"] in data:
                    raw = data[ref["key"]]
                    out[e["name"]] = base64.b64decode(raw).decode() if plural == "secrets" else raw
                elif not ref.get("optional"):
                    raise RuntimeError(f"{plural} {ref['name']!r} has no key {ref['key']!r}")
        return out

    def service_account_token(self, ns: str, account: str, audience: str, seconds: int) -> str:
        """A JWT for the ServiceAccount, as the API server's TokenRequest makes it."""
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        issued = int(datetime.datetime.now(tz=datetime.UTC).timestamp())
        header = b64(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
        claims = b64(json.dumps({
            "iss": ISSUER, "sub": f"system:serviceaccount:{ns}:{account}", "aud": [audience],
            "iat": issued, "nbf": issued, "exp": issued + seconds,
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": account}},
        }).encode())
        signature = b64(self.issuer_key.sign(f"{header}.{claims}".encode()))
        return f"{header}.{claims}.{signature}"

    def project_tokens(self, pod: dict, container: dict) -> dict[str, str]:
        """Writes the Pod's projected tokens that carry an audience; maps each
        mount path to the folder that stands for it."""
        meta, spec = pod["metadata"], pod["spec"]
        ns, account = meta["namespace"], spec.get("serviceAccountName") or "default"
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts") or []}
        out: dict[str, str] = {}
        for volume in spec.get("volumes") or []:
            sources = (volume.get("projected") or {}).get("sources") or []
            tokens = [s["serviceAccountToken"] for s in sources
                      if "serviceAccountToken" in s and s["serviceAccountToken"].get("audience")]
            if not tokens or volume["name"] not in mounts:
                continue
            folder = self.workdir / "volumes" / f"{ns}_{meta['name']}" / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for t in tokens:
                token = self.service_account_token(ns, account, t["audience"], t.get("expirationSeconds", 3600))
                (folder / t["path"]).write_text(token)
            out[mounts[volume["name"]]] = str(folder)
        return out

    def kubeconfig(self, ns: str, name: str, account: str) -> pathlib.Path:
        """A kubeconfig with a token of the Pod's ServiceAccount."""
        token = f"kapi-sa.{ns}.{account}.{secrets.token_hex(8)}"
        self.tokens[(ns, name)] = token
        path = self.workdir / "kubeconfigs" / f"{ns}_{name}.yaml"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "kapi", "cluster": {"server": self.server}}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "kapi", "user": account, "namespace": ns}}],
        }))
        path.chmod(0o600)
        return path

    async def run_pod(self, http: aiohttp.ClientSession, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        ns, name = meta["namespace"], meta["name"]
        container = spec["containers"][0]
        log_path = self.workdir / "logs" / f"{ns}_{name}.log"
        started = now()
        base_status = {"hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": started}
        try:
            command = list(container.get("command") or [])
            if not command or command[0] not in self.commands:
                raise RuntimeError(f"no local executable for command {command[:1]}")
            argv = [self.commands[command[0]], *command[1:], *(container.get("args") or [])]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **await self.env(http, pod, container)}
            for mount_path, folder in self.project_tokens(pod, container).items():
                for key, value in env.items():
                    if value.startswith(mount_path.rstrip("/") + "/"):
                        env[key] = folder + value[len(mount_path.rstrip("/")):]
            env["KUBECONFIG"] = str(self.kubeconfig(ns, name, spec.get("serviceAccountName") or "default"))
            log = open(log_path, "wb")
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=str(self.workdir), stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
            log.close()
        except Exception as e:  # the pod cannot start: report it as a waiting container
            await self.patch_status(http, ns, name, {**base_status, "phase": "Pending", "containerStatuses": [{
                "name": container["name"], "ready": False, "restartCount": 0, "image": container.get("image", ""),
                "imageID": "", "state": {"waiting": {"reason": "CreateContainerError", "message": str(e)}}}]})
            return
        self.procs[(ns, name)] = proc
        (self.workdir / "pids" / f"{ns}_{name}.pid").write_text(str(proc.pid))
        container_status = {"name": container["name"], "restartCount": 0, "image": container.get("image", ""),
                            "imageID": "", "containerID": f"kapi://{proc.pid}", "started": True}
        await self.patch_status(http, ns, name, {**base_status, "phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": started}],
            "containerStatuses": [{**container_status, "ready": True, "state": {"running": {"startedAt": started}}}]})
        deadline = spec.get("activeDeadlineSeconds")
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), timeout=deadline)
        except TimeoutError:
            timed_out = True
            self.kill(proc, signal.SIGKILL)
            await proc.wait()
        finally:
            self.procs.pop((ns, name), None)
        code = proc.returncode if proc.returncode is not None else 137
        if code < 0:  # killed by a signal: what a container runtime reports
            code = 128 - code
        finished = now()
        terminated = {"exitCode": code, "startedAt": started, "finishedAt": finished,
                      "reason": "Completed" if code == 0 else "Error",
                      "containerID": container_status["containerID"]}
        if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = log_path.read_bytes().decode("utf-8", "replace").splitlines()
            terminated["message"] = "\n".join(lines[-TERMINATION_LOG_LINES:])[-4096:]
        status = {**base_status, "phase": "Succeeded" if code == 0 and not timed_out else "Failed",
                  "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": finished}],
                  "containerStatuses": [{**container_status, "ready": False, "started": False,
                                         "state": {"terminated": terminated}}]}
        if timed_out:
            status["reason"] = "DeadlineExceeded"
            status["message"] = f"Pod was active on the node longer than the specified deadline ({deadline}s)"
        await self.patch_status(http, ns, name, status)

    @staticmethod
    def kill(proc: asyncio.subprocess.Process, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    async def stop_pod(self, key: tuple[str, str]) -> None:
        proc = self.procs.get(key)
        if proc is None:
            return
        self.kill(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=5)
        except TimeoutError:
            self.kill(proc, signal.SIGKILL)

    # -- the loop --

    async def serve(self, ready_file: str | None) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            while True:
                listed = await self.get(http, "/api/v1/pods")
                assert listed is not None
                for pod in listed["items"]:
                    self.consider(http, "ADDED", pod)
                if ready_file:
                    pathlib.Path(ready_file).write_text("ready")
                    ready_file = None
                rv = listed["metadata"]["resourceVersion"]
                url = f"{self.server}/api/v1/pods?watch=true&resourceVersion={rv}&timeoutSeconds=300"
                async with http.get(url) as r:
                    if r.status == 410:
                        continue
                    r.raise_for_status()
                    async for line in r.content:
                        if line.strip():
                            event = json.loads(line)
                            self.consider(http, event["type"], event["object"])

    def consider(self, http: aiohttp.ClientSession, type_: str, pod: dict) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        if type_ == "DELETED" or meta.get("deletionTimestamp"):
            if key in self.procs:
                asyncio.get_running_loop().create_task(self.stop_pod(key))
            if type_ == "DELETED":
                self.running.pop(key, None)  # a new Pod of that name is a new Pod
            return
        phase = (pod.get("status") or {}).get("phase")
        if key in self.running or phase in ("Running", "Succeeded", "Failed"):
            return
        self.running[key] = asyncio.get_running_loop().create_task(self.run_pod(http, pod))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--command", action="append", default=[], metavar="CONTAINER_PATH=LOCAL_PATH",
                        help="run a container command as this local executable")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--node", default="kapi-node")
    parser.add_argument("--ready-file")
    args = parser.parse_args()
    commands = dict(c.split("=", 1) for c in args.command)
    kubelet = Kubelet(args.server, commands, pathlib.Path(args.workdir), args.node)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = loop.create_task(kubelet.serve(args.ready_file))
        await asyncio.wait([task, loop.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        for key in list(kubelet.procs):
            await kubelet.stop_pod(key)
        if task.done() and task.exception():
            raise task.exception()
        task.cancel()

    asyncio.run(run())


if __name__ == "__main__":
    main()
