"""A test kubelet: binds the Pods of a Kubernetes API server to its Node and
runs them as local processes, with the identities and rights a kubelet has.

Two identities, two client certificates of the cluster:

- the node (`system:node:<name>` in `system:nodes`): it registers its Node,
  watches the Pods bound to it, reads what they reference (Secrets, ConfigMaps,
  ServiceAccount tokens through TokenRequest), writes their status and deletes
  them when they are done terminating. The API server's Node authorizer and the
  NodeRestriction admission plugin hold it to the Pods bound to it, as they
  hold a real kubelet;
- the binder (`system:kube-scheduler`): it binds every unscheduled Pod to the
  node, the one thing a scheduler would do here.

For each Pod it resolves the container's environment (values, the downward
API, Secret and ConfigMap keys), fills each projected volume the container
mounts into a folder (`volumes/<namespace>_<pod>/<volume>`): ServiceAccount
tokens minted by the API server through TokenRequest, bound to the Pod, with
the volume's audience and expiry, as a kubelet asks for them; ConfigMap keys
(the cluster CA); the downward API. Environment values naming a file under a
mount path are pointed at its folder. The process finds the API through
KUBECONFIG: the server, the CA and the token file of the volume mounted where
Kubernetes clients look (/var/run/secrets/kubernetes.io/serviceaccount), so a
run has exactly the rights its ServiceAccount has, for as long as its Pod
exists.

It writes the Pod's phase and container state back through the status
subresource: Running, then Succeeded or Failed with the exit code, the reason
(Completed, Error, DeadlineExceeded) and, for a failure, the end of the log as
the termination message (FallbackToLogsOnError). activeDeadlineSeconds is
enforced by killing the process; a Pod being deleted has its process stopped
and is then deleted for good, as a kubelet confirms a graceful deletion.

Images are not pulled and nothing is isolated: the container command
(`/job-runner`) is mapped to a local executable; the security context and
resources are for the API server's admission to judge.

Run: python tests/kubelet/kubelet.py --kubeconfig NODE --binder-kubeconfig SCHED
         --command /job-runner=PATH --workdir DIR [--node NAME] [--ready-file F]

The workdir holds `logs/<namespace>_<pod>.log`, `pids/<namespace>_<pod>.pid`
(for tests that kill a runner), `kubeconfigs/<namespace>_<pod>.yaml` and
the volumes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import pathlib
import signal
import ssl
import sys
from typing import Any

import aiohttp

TERMINATION_LOG_LINES = 80
# Requests the API server refuses while its caches catch up with a binding.
RETRIES = 40
RETRY_SECONDS = 0.25
API_ACCESS_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Identity:
    """One kubeconfig's server, CA and client certificate."""

    def __init__(self, kubeconfig: str) -> None:
        config = json.loads(pathlib.Path(kubeconfig).read_text())
        cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
        self.server = cluster["server"].rstrip("/")
        self.ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self.ssl = ssl.create_default_context(cadata=self.ca)
        self.ssl.load_cert_chain(user["client-certificate"], user["client-key"])

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl),
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))


class Api:
    def __init__(self, identity: Identity, http: aiohttp.ClientSession) -> None:
        self.server = identity.server
        self.http = http

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      ok: tuple[int, ...] = (200, 201)) -> tuple[int, Any]:
        data = json.dumps(body) if body is not None else None
        async with self.http.request(method, self.server + path, data=data,
                                     headers={"Content-Type": content_type}) as r:
            text = await r.text()
            if r.status not in ok:
                print(f"kubelet: {method} {path}: HTTP {r.status} {text[:500]}", file=sys.stderr, flush=True)
            try:
                return r.status, json.loads(text) if text else None
            except json.JSONDecodeError:
                return r.status, None

    async def get(self, path: str) -> Any:
        # The Node authorizer learns a pod's references from a watch: right
        # after a pod is bound, its node may be refused for a moment (a real
        # kubelet retries its volume mounts too).
        for _ in range(RETRIES):
            status, obj = await self.request("GET", path, ok=(200, 403, 404))
            if status != 403:
                break
            await asyncio.sleep(RETRY_SECONDS)
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        return obj

    async def watch(self, path: str, selector: str, handle) -> None:
        """List, then watch from the list's resourceVersion, forever; each
        object goes to `handle(type, obj)`."""
        while True:
            listed = await self.get(f"{path}?fieldSelector={selector}")
            for obj in listed["items"]:
                handle("ADDED", obj)
            rv = listed["metadata"]["resourceVersion"]
            url = f"{self.server}{path}?watch=true&fieldSelector={selector}&resourceVersion={rv}" \
                  "&allowWatchBookmarks=true&timeoutSeconds=240"
            try:
                async with self.http.get(url) as r:
                    if r.status != 200:
                        await asyncio.sleep(0.5)
                        continue
                    async for line in r.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break
                        if event["type"] != "BOOKMARK":
                            handle(event["type"], event["object"])
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(0.5)


class Kubelet:
    def __init__(self, node: Identity, binder: Identity, commands: dict[str, str], workdir: pathlib.Path,
                 name: str) -> None:
        self.node_identity = node
        self.binder_identity = binder
        self.commands = commands
        self.workdir = workdir
        self.name = name
        self.running: dict[tuple[str, str], asyncio.Task] = {}
        self.procs: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self.finishing: set[tuple[str, str]] = set()
        self.binding: set[str] = set()
        for sub in ("logs", "pids", "kubeconfigs", "volumes"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)

    # -- the node --

    async def register(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": {
            "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}}
        status, _ = await self.api.request("POST", "/api/v1/nodes", node, ok=(201, 409))
        if status not in (201, 409):
            raise RuntimeError(f"the node {self.name} could not register: HTTP {status}")
        ready = {"status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test kubelet",
            "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
            "addresses": [{"type": "Hostname", "address": self.name}]}}
        await self.api.request("PATCH", f"/api/v1/nodes/{self.name}/status", ready,
                               "application/strategic-merge-patch+json")

    async def patch_status(self, ns: str, name: str, status: dict) -> None:
        await self.api.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": status},
                               "application/merge-patch+json", ok=(200, 404))

    # -- the binder --

    def consider_unbound(self, type_: str, pod: dict) -> None:
        meta = pod["metadata"]
        if type_ == "DELETED" or meta.get("deletionTimestamp") or pod["spec"].get("nodeName"):
            return
        if meta["uid"] in self.binding:
            return
        self.binding.add(meta["uid"])
        asyncio.get_running_loop().create_task(self.bind(pod))

    async def bind(self, pod: dict) -> None:
        meta = pod["metadata"]
        binding = {"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.name}}
        await self.binder.request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
                                  binding, ok=(201, 404, 409))

    # -- pods --

    async def env(self, pod: dict, container: dict) -> dict[str, str]:
        ns, meta = pod["metadata"]["namespace"], pod["metadata"]
        out: dict[str, str] = {}
        for e in container.get("env") or []:
            if "value" in e:
                out[e["name"]] = e["value"]
                continue
            src = e.get("valueFrom") or {}
            if "fieldRef" in src:
                value = self.field(pod, src["fieldRef"]["fieldPath"])
                if value is not None:
                    out[e["name"]] = str(value)
            elif "secretKeyRef" in src or "configMapKeyRef" in src:
                ref = src.get("secretKeyRef") or src["configMapKeyRef"]
                plural = "secrets" if "secretKeyRef" in src else "configmaps"
                obj = await self.api.get(f"/api/v1/namespaces/{ns}/{plural}/{ref['name']}")
                data = (obj or {}).get("data") or {}
                if ref["key"] in data:
                    raw = data[ref["key"]]
                    out[e["name"]] = base64.b64decode(raw).decode() if plural == "secrets" else raw
                elif not ref.get("optional"):
                    raise RuntimeError(f"{plural} {ref['name']!r} of {meta['name']} has no key {ref['key']!r}")
        return out

    def field(self, pod: dict, path: str) -> object:
        meta = pod["metadata"]
        value = {"metadata.namespace": meta["namespace"], "metadata.name": meta["name"],
                 "metadata.uid": meta.get("uid"), "spec.nodeName": self.name,
                 "spec.serviceAccountName": pod["spec"].get("serviceAccountName")}.get(path)
        for prefix, source in (("metadata.labels['", "labels"), ("metadata.annotations['", "annotations")):
            if value is None and path.startswith(prefix):
                value = (meta.get(source) or {}).get(path[len(prefix):-2])
        return value

    async def token(self, pod: dict, audience: str | None, seconds: int) -> str:
        """A ServiceAccount token for the pod, from the API server's
        TokenRequest, bound to the pod, as a kubelet asks for it."""
        meta, spec = pod["metadata"], pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}}
        if audience:
            body["spec"]["audiences"] = [audience]
        for _ in range(RETRIES):
            # NodeRestriction judges the pod's binding from the API server's
            # cache, which may not have seen it yet: refused for a moment.
            status, answer = await self.api.request(
                "POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token", body,
                ok=(201, 403))
            if status != 403:
                break
            await asyncio.sleep(RETRY_SECONDS)
        if status != 201:
            raise RuntimeError(f"TokenRequest for {meta['namespace']}/{account} refused: HTTP {status}")
        return answer["status"]["token"]

    async def project(self, pod: dict, container: dict) -> dict[str, pathlib.Path]:
        """Fills each projected volume the container mounts; maps its mount
        path to the folder that stands for it."""
        meta, spec = pod["metadata"], pod["spec"]
        ns = meta["namespace"]
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts") or []}
        out: dict[str, pathlib.Path] = {}
        for volume in spec.get("volumes") or []:
            if "projected" not in volume or volume["name"] not in mounts:
                continue
            folder = self.workdir / "volumes" / f"{ns}_{meta['name']}" / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for source in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    t = source["serviceAccountToken"]
                    token = await self.token(pod, t.get("audience"), t.get("expirationSeconds", 3600))
                    path = folder / t["path"]
                    path.touch(mode=0o600)
                    path.write_text(token)
                elif "configMap" in source:
                    ref = source["configMap"]
                    obj = await self.api.get(f"/api/v1/namespaces/{ns}/configmaps/{ref['name']}")
                    if obj is None and not ref.get("optional"):
                        raise RuntimeError(f"configmap {ref['name']!r} not found")
                    data = (obj or {}).get("data") or {}
                    for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                        (folder / item["path"]).write_text(data[item["key"]])
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"].get("items") or []:
                        value = self.field(pod, item["fieldRef"]["fieldPath"])
                        (folder / item["path"]).write_text(str(value if value is not None else ""))
                elif "secret" in source:
                    raise RuntimeError("projected Secrets are not supported by the test kubelet")
            out[mounts[volume["name"]]] = folder
        return out

    def kubeconfig(self, ns: str, name: str, account: str, api_access: pathlib.Path | None) -> pathlib.Path:
        """What a client in the pod would find: the API server, the cluster CA and
        the token of the volume mounted where clients look for them."""
        user: dict = {}
        cluster: dict = {"server": self.node_identity.server}
        if api_access is not None:
            user = {"tokenFile": str(api_access / "token")}
            if (api_access / "ca.crt").exists():
                cluster["certificate-authority"] = str(api_access / "ca.crt")
        path = self.workdir / "kubeconfigs" / f"{ns}_{name}.yaml"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": account, "user": user}],
            "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": account, "namespace": ns}}],
        }))
        path.chmod(0o600)
        return path

    async def run_pod(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        ns, name = meta["namespace"], meta["name"]
        key = (ns, name)
        container = spec["containers"][0]
        log_path = self.workdir / "logs" / f"{ns}_{name}.log"
        started = now()
        base_status = {"startTime": started}
        try:
            command = list(container.get("command") or [])
            if not command or command[0] not in self.commands:
                raise RuntimeError(f"no local executable for command {command[:1]}")
            argv = [self.commands[command[0]], *command[1:], *(container.get("args") or [])]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **await self.env(pod, container)}
            folders = await self.project(pod, container)
            for mount_path, folder in folders.items():
                prefix = mount_path.rstrip("/") + "/"
                for k, value in env.items():
                    if value.startswith(prefix):
                        env[k] = str(folder / value[len(prefix):])
            env["KUBECONFIG"] = str(self.kubeconfig(ns, name, spec.get("serviceAccountName") or "default",
                                                    folders.get(API_ACCESS_PATH)))
            if key in self.finishing:
                return
            log = open(log_path, "wb")
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=str(self.workdir), stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
            log.close()
        except Exception as e:  # the pod cannot start: report it as a waiting container
            print(f"kubelet: {ns}/{name} cannot start: {e}", file=sys.stderr, flush=True)
            await self.patch_status(ns, name, {**base_status, "phase": "Pending", "containerStatuses": [{
                "name": container["name"], "ready": False, "restartCount": 0, "image": container.get("image", ""),
                "imageID": "", "state": {"waiting": {"reason": "CreateContainerError", "message": str(e)[:1000]}}}]})
            return
        self.procs[key] = proc
        (self.workdir / "pids" / f"{ns}_{name}.pid").write_text(str(proc.pid))
        container_status = {"name": container["name"], "restartCount": 0, "image": container.get("image", ""),
                            "imageID": "", "containerID": f"local://{proc.pid}", "started": True}
        await self.patch_status(ns, name, {**base_status, "phase": "Running", "conditions": [
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
            self.procs.pop(key, None)
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
        await self.patch_status(ns, name, status)
        if key in self.finishing:
            await self.finish(pod)

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

    async def finish(self, pod: dict) -> None:
        """A pod being deleted: stop its process, then delete it for good."""
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        await self.stop_pod(key)
        task = self.running.get(key)
        if task is not None and not task.done() and key in self.procs:
            return  # run_pod writes the end and finishes
        await self.api.request(
            "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
            {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
             "preconditions": {"uid": meta["uid"]}}, ok=(200, 404, 409))

    # -- the loop --

    def consider(self, type_: str, pod: dict) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        loop = asyncio.get_running_loop()
        if type_ == "DELETED":
            self.finishing.discard(key)
            self.running.pop(key, None)  # a new Pod of that name is a new Pod
            return
        if meta.get("deletionTimestamp"):
            if key not in self.finishing:
                self.finishing.add(key)
                loop.create_task(self.finish(pod))
            return
        phase = (pod.get("status") or {}).get("phase")
        if key in self.running or phase in ("Running", "Succeeded", "Failed"):
            return
        self.running[key] = loop.create_task(self.run_pod(pod))

    async def serve(self, ready_file: str | None) -> None:
        async with self.node_identity.session() as node_http, self.binder_identity.session() as binder_http:
            self.api = Api(self.node_identity, node_http)
            self.binder = Api(self.binder_identity, binder_http)
            await self.register()
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(self.api.watch("/api/v1/pods", f"spec.nodeName={self.name}", self.consider)),
                     loop.create_task(self.binder.watch("/api/v1/pods", "spec.nodeName=", self.consider_unbound))]
            if ready_file:
                pathlib.Path(ready_file).write_text("ready")
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="the node's kubeconfig (a client certificate)")
    parser.add_argument("--binder-kubeconfig", required=True, help="the binder's (system:kube-scheduler)")
    parser.add_argument("--command", action="append", default=[], metavar="CONTAINER_PATH=LOCAL_PATH",
                        help="run a container command as this local executable")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--node", default="ferry-node")
    parser.add_argument("--ready-file")
    args = parser.parse_args()
    commands = dict(c.split("=", 1) for c in args.command)
    kubelet = Kubelet(Identity(args.kubeconfig), Identity(args.binder_kubeconfig), commands,
                      pathlib.Path(args.workdir), args.node)

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
