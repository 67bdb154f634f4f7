"""The end-to-end tests' Kubernetes API (tests/kapi/kapi.py), tested by itself:
each behaviour kube-rs or kubectl relies on, over HTTP, as they would use it."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent
KUBECTL = pathlib.Path(os.environ.get("FERRY_CACHE", pathlib.Path.home() / ".cache/ferry")) / "bin/kubectl"

CM = "/api/v1/namespaces/default/configmaps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api():
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        ready = pathlib.Path(tmp, "ready")
        proc = subprocess.Popen([sys.executable, str(HERE / "kapi.py"), "--port", str(port),
                                 "--ready-file", str(ready), "--history", "200"])
        for _ in range(100):
            if ready.exists():
                break
            assert proc.poll() is None, "the API server exited"
            time.sleep(0.1)
        else:
            proc.kill()
            pytest.fail("the API server did not start")
        yield Client(f"http://127.0.0.1:{port}")
        proc.terminate()
        proc.wait(timeout=10)


class Client:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body=None, ctype="application/json", headers=None):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def ok(self, method: str, path: str, body=None, **kw):
        status, out = self.call(method, path, body, **kw)
        assert status in (200, 201), (status, out)
        return out

    def watch(self, path: str, seconds: float = 1.0) -> list[dict]:
        """Watch events for `seconds` (the server ends the stream at timeoutSeconds)."""
        sep = "&" if "?" in path else "?"
        req = urllib.request.Request(f"{self.url}{path}{sep}watch=true&timeoutSeconds={seconds}")
        with urllib.request.urlopen(req, timeout=seconds + 10) as r:
            return [json.loads(line) for line in r.read().splitlines() if line.strip()]


def cm(name: str, labels=None, data=None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels or {}}, "data": data or {"k": "v"}}


def test_create_sets_identity_and_versions_and_refuses_duplicates(api):
    obj = api.ok("POST", CM, cm("ident"))
    meta = obj["metadata"]
    assert len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")
    assert meta["namespace"] == "default" and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    status, err = api.call("POST", CM, cm("ident"))
    assert (status, err["reason"]) == (409, "AlreadyExists")
    status, err = api.call("POST", "/api/v1/namespaces/nowhere/configmaps", cm("x"))
    assert (status, err["reason"]) == (404, "NotFound"), "a namespace must exist first"
    named = api.ok("POST", CM, {"metadata": {"generateName": "gen-"}, "data": {}})
    assert named["metadata"]["name"].startswith("gen-") and len(named["metadata"]["name"]) > 4


def test_a_stale_resource_version_is_a_conflict(api):
    obj = api.ok("POST", CM, cm("stale"))
    fresh = api.ok("PUT", f"{CM}/stale", {**obj, "data": {"k": "2"}})
    assert int(fresh["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    status, err = api.call("PUT", f"{CM}/stale", {**obj, "data": {"k": "3"}})
    assert (status, err["reason"]) == (409, "Conflict")
    status, err = api.call("PATCH", f"{CM}/stale", {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                                    "data": {"k": "4"}}, ctype="application/merge-patch+json")
    assert (status, err["reason"]) == (409, "Conflict")
    assert api.ok("GET", f"{CM}/stale")["data"] == {"k": "2"}


def test_a_write_that_changes_nothing_bumps_nothing_and_sends_no_event(api):
    obj = api.ok("POST", CM, cm("noop"))
    rv = obj["metadata"]["resourceVersion"]
    same = api.ok("PATCH", f"{CM}/noop", {"data": {"k": "v"}}, ctype="application/merge-patch+json")
    assert same["metadata"]["resourceVersion"] == rv
    same = api.ok("PUT", f"{CM}/noop", obj)
    assert same["metadata"]["resourceVersion"] == rv
    events = api.watch(f"{CM}?resourceVersion={rv}&fieldSelector=metadata.name=noop", 0.5)
    assert events == []
    api.ok("PATCH", f"{CM}/noop", {"data": {"k": "w"}}, ctype="application/merge-patch+json")
    events = api.watch(f"{CM}?resourceVersion={rv}&fieldSelector=metadata.name=noop", 0.5)
    assert [e["type"] for e in events] == ["MODIFIED"]


def test_patch_kinds(api):
    api.ok("POST", CM, cm("patches", data={"a": "1", "b": "2"}))
    out = api.ok("PATCH", f"{CM}/patches", {"data": {"a": None, "c": "3"}}, ctype="application/merge-patch+json")
    assert out["data"] == {"b": "2", "c": "3"}
    out = api.ok("PATCH", f"{CM}/patches", {"data": {"d": "4"}, "$patch": "merge"},
                 ctype="application/strategic-merge-patch+json")
    assert out["data"] == {"b": "2", "c": "3", "d": "4"}
    out = api.ok("PATCH", f"{CM}/patches", [{"op": "test", "path": "/data/b", "value": "2"},
                                            {"op": "remove", "path": "/data/b"},
                                            {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}],
                 ctype="application/json-patch+json")
    assert out["data"] == {"c": "3", "d": "4"} and out["metadata"]["finalizers"] == ["x/y"]
    status, err = api.call("PATCH", f"{CM}/patches", [{"op": "test", "path": "/data/c", "value": "nope"}],
                           ctype="application/json-patch+json")
    assert (status, err["reason"]) == (422, "Invalid")
    api.ok("PATCH", f"{CM}/patches", [{"op": "remove", "path": "/metadata/finalizers"}],
           ctype="application/json-patch+json")


def apply(api, path, body, manager, force=False):
    q = f"?fieldManager={manager}" + ("&force=true" if force else "")
    return api.call("PATCH", path + q, body, ctype="application/apply-patch+yaml")


def test_server_side_apply_creates_removes_and_detects_conflicts(api):
    path = "/apis/coordination.k8s.io/v1/namespaces/default/leases/leader"
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
             "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    status, out = apply(api, path, lease, "a")
    assert status == 201 and out["spec"]["holderIdentity"] == "a"
    # Another manager applying a different holder, without force: conflict.
    status, err = apply(api, path, {**lease, "spec": {"holderIdentity": "b"}}, "b")
    assert (status, err["reason"]) == (409, "Conflict") and "spec.holderIdentity" in err["message"]
    # The same value is no conflict (shared ownership).
    status, _ = apply(api, path, {**lease, "spec": {"leaseDurationSeconds": 15}}, "b")
    assert status == 200
    # A manager's strategic-merge update releases the field; then b may take it.
    api.ok("PATCH", f"{path}?fieldManager=a", {"spec": {"holderIdentity": None}},
           ctype="application/strategic-merge-patch+json")
    status, out = apply(api, path, {**lease, "spec": {"holderIdentity": "b"}}, "b")
    assert status == 200 and out["spec"]["holderIdentity"] == "b"
    # Force takes a field from its owner.
    status, out = apply(api, path, {**lease, "spec": {"holderIdentity": "c"}}, "c", force=True)
    assert status == 200 and out["spec"]["holderIdentity"] == "c"
    # A field a manager stops applying goes, unless someone else owns it.
    status, out = apply(api, f"{CM}/applied", cm("applied", labels={"keep": "1", "drop": "1"}), "m")
    assert status == 201
    status, out = apply(api, f"{CM}/applied", cm("applied", labels={"keep": "1"}), "m")
    assert status == 200 and out["metadata"]["labels"] == {"keep": "1"}
    # fieldManager is required.
    status, err = api.call("PATCH", f"{CM}/applied", cm("applied"), ctype="application/apply-patch+yaml")
    assert status == 422
    # YAML bodies are accepted, as kubectl sends them.
    status, out = api.call("PATCH", f"{CM}/yaml?fieldManager=y",
                           b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: yaml}\ndata: {k: 'v'}\n",
                           ctype="application/apply-patch+yaml")
    assert status == 201 and out["data"] == {"k": "v"}


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.dev"},
    "spec": {"group": "example.dev", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}
W = "/apis/example.dev/v1/namespaces/default/widgets"


def test_a_crd_is_served_with_its_status_subresource_isolated(api):
    api.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    disco = api.ok("GET", "/apis/example.dev/v1")
    names = {r["name"]: r for r in disco["resources"]}
    assert names["widgets"]["kind"] == "Widget" and "widgets/status" in names
    w = api.ok("POST", W, {"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"},
                           "spec": {"size": 1}, "status": {"ready": True}})
    assert "status" not in w, "status is not written on create"
    # A write to the object ignores status; a write to /status touches only status.
    w = api.ok("PATCH", f"{W}/w", {"spec": {"size": 2}, "status": {"ready": True}},
               ctype="application/merge-patch+json")
    assert "status" not in w and w["metadata"]["generation"] == 2
    w = api.ok("PATCH", f"{W}/w/status", {"spec": {"size": 9}, "status": {"ready": True}},
               ctype="application/merge-patch+json")
    assert w["status"] == {"ready": True} and w["spec"] == {"size": 2}
    assert w["metadata"]["generation"] == 2, "a status write does not bump the generation"
    w = api.ok("PATCH", f"{W}/w", {"metadata": {"labels": {"a": "b"}}}, ctype="application/merge-patch+json")
    assert w["metadata"]["generation"] == 2, "a metadata write does not bump the generation"
    assert w["status"] == {"ready": True}


def test_secret_string_data_is_stored_as_base64_data(api):
    out = api.ok("POST", "/api/v1/namespaces/default/secrets",
                  {"metadata": {"name": "sd"}, "data": {"a": "YQ=="}, "stringData": {"b": "bee"}})
    assert out["data"] == {"a": "YQ==", "b": "YmVl"} and "stringData" not in out


def test_finalizers_hold_deletion_until_removed(api):
    api.ok("POST", CM, {**cm("final"), "metadata": {"name": "final", "finalizers": ["ferry.dev/x"]}})
    out = api.ok("DELETE", f"{CM}/final")
    assert out["metadata"]["deletionTimestamp"]
    assert api.ok("GET", f"{CM}/final")["metadata"]["deletionTimestamp"]
    api.ok("PATCH", f"{CM}/final", {"metadata": {"finalizers": None}}, ctype="application/merge-patch+json")
    status, _ = api.call("GET", f"{CM}/final")
    assert status == 404


def test_dependents_are_garbage_collected_with_their_owner(api):
    owner = api.ok("POST", CM, cm("owner"))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"],
           "controller": True}
    api.ok("POST", CM, {**cm("child"), "metadata": {"name": "child", "ownerReferences": [ref]}})
    api.ok("POST", "/api/v1/namespaces/default/secrets",
           {"metadata": {"name": "child-secret", "ownerReferences": [ref]}, "data": {}})
    api.ok("DELETE", f"{CM}/owner", {"propagationPolicy": "Background"})
    assert api.call("GET", f"{CM}/child")[0] == 404
    assert api.call("GET", "/api/v1/namespaces/default/secrets/child-secret")[0] == 404
    # Orphan keeps the dependents, without the reference.
    owner = api.ok("POST", CM, cm("owner2"))
    ref = {**ref, "name": "owner2", "uid": owner["metadata"]["uid"]}
    api.ok("POST", CM, {**cm("orphan"), "metadata": {"name": "orphan", "ownerReferences": [ref]}})
    api.ok("DELETE", f"{CM}/owner2?propagationPolicy=Orphan")
    kept = api.ok("GET", f"{CM}/orphan")
    assert not kept["metadata"].get("ownerReferences")


def test_list_has_kind_version_and_selectors(api):
    for name, labels in (("sel-a", {"app": "ferry", "tier": "run"}), ("sel-b", {"app": "ferry"}),
                         ("sel-c", {"app": "other"})):
        api.ok("POST", CM, cm(name, labels=labels))
    out = api.ok("GET", f"{CM}?labelSelector=app%3Dferry")
    assert out["kind"] == "ConfigMapList" and out["apiVersion"] == "v1"
    assert int(out["metadata"]["resourceVersion"]) > 0

    def names(selector: str) -> list[str]:
        q = urllib.request.quote(selector)
        return [i["metadata"]["name"] for i in api.ok("GET", f"{CM}?labelSelector={q}")["items"]
                if i["metadata"]["name"].startswith("sel-")]

    assert names("app=ferry") == ["sel-a", "sel-b"]
    assert names("app==ferry,tier") == ["sel-a"]
    assert names("app=ferry,!tier") == ["sel-b"]
    assert names("app!=ferry") == ["sel-c"]
    assert names("app in (other, nope)") == ["sel-c"]
    assert names("app notin (other),tier") == ["sel-a"]
    out = api.ok("GET", f"{CM}?fieldSelector=metadata.name%3Dsel-b")
    assert [i["metadata"]["name"] for i in out["items"]] == ["sel-b"]
    everywhere = api.ok("GET", "/api/v1/configmaps")
    assert any(i["metadata"]["name"] == "sel-a" for i in everywhere["items"])
    status, err = api.call("GET", f"{CM}?labelSelector=%3D%3D%3D")
    assert status == 400
    meta = api.ok("GET", f"{CM}?labelSelector=app%3Dother",
                  headers={"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"})
    assert meta["kind"] == "PartialObjectMetadataList"
    assert meta["items"][0]["kind"] == "PartialObjectMetadata" and "data" not in meta["items"][0]


def test_watch_resumes_from_a_version_with_selectors_and_expires(api):
    start = api.ok("GET", CM)["metadata"]["resourceVersion"]
    api.ok("POST", CM, cm("w-1", labels={"watch": "yes"}))
    api.ok("POST", CM, cm("w-2", labels={"watch": "no"}))
    api.ok("PATCH", f"{CM}/w-1", {"data": {"k": "x"}}, ctype="application/merge-patch+json")
    api.ok("DELETE", f"{CM}/w-1")
    events = api.watch(f"{CM}?resourceVersion={start}&labelSelector=watch%3Dyes", 0.5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w-1"), ("MODIFIED", "w-1"), ("DELETED", "w-1")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3
    # Without a version: the current objects as ADDED, then changes as they come.
    got: list[dict] = []
    t = threading.Thread(target=lambda: got.extend(api.watch(f"{CM}?labelSelector=watch%3Dno", 2.0)))
    t.start()
    time.sleep(0.5)
    api.ok("PATCH", f"{CM}/w-2", {"data": {"k": "y"}}, ctype="application/merge-patch+json")
    t.join()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [("ADDED", "w-2"), ("MODIFIED", "w-2")]
    # Older than the kept history (200 events here): 410 Gone.
    for i in range(210):
        api.ok("PATCH", f"{CM}/w-2", {"data": {"n": str(i)}}, ctype="application/merge-patch+json")
    status, err = api.call("GET", f"{CM}?watch=true&resourceVersion={start}")
    assert (status, err["reason"]) == (410, "Expired")


def test_a_watch_misses_no_event_written_while_it_streams(api):
    # Large objects: writing each event to the stream waits for the socket,
    # and other writes land meanwhile.
    api.ok("POST", CM, cm("busy", data={"k": "v", "big": "x" * 300_000}))
    start = api.ok("GET", f"{CM}/busy")["metadata"]["resourceVersion"]
    got: list[dict] = []
    t = threading.Thread(target=lambda: got.extend(
        api.watch(f"{CM}?resourceVersion={start}&fieldSelector=metadata.name%3Dbusy", 4.0)))
    t.start()

    def writer(w: int) -> None:
        for i in range(50):
            api.ok("PATCH", f"{CM}/busy", {"data": {f"w{w}": str(i)}}, ctype="application/merge-patch+json")

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    t.join()
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in got]
    assert len(rvs) == 200 and rvs == sorted(rvs), (len(rvs), rvs[:5])
    assert {k: v for k, v in got[-1]["object"]["data"].items() if k != "big"} == {
        "k": "v", **{f"w{w}": "49" for w in range(4)}}


def test_kubectl_applies_the_chart_crds_and_an_example_and_reads_them_back(api):
    assert KUBECTL.exists(), f"{KUBECTL} missing: run tests/bootstrap.sh install"
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HOME": home, "KUBECONFIG": os.devnull}

        def kubectl(*args: str, stdin: str | None = None) -> str:
            # No OpenAPI documents here: apply leaves validation to the server.
            extra = ["--validate=false"] if args[0] == "apply" else []
            out = subprocess.run([str(KUBECTL), "--server", api.url, *args[:1], *extra, *args[1:]],
                                 input=stdin, capture_output=True, text=True, env=env, timeout=60)
            assert out.returncode == 0, out.stderr
            return out.stdout

        kubectl("apply", "--server-side", "-f", str(ROOT / "charts/ferry/crds"))
        kubectl("apply", "--server-side", "-f", "-",
                stdin="apiVersion: v1\nkind: Namespace\nmetadata: {name: acme}\n")
        kubectl("apply", "--server-side", "-f", str(ROOT / "examples/s3-to-azure"))
        got = json.loads(kubectl("get", "connectors.ferry.dev", "-n", "acme", "-o", "json"))
        assert [i["metadata"]["name"] for i in got["items"]] == ["sales-exports"]
        # A second apply of the same files changes nothing.
        rv = got["items"][0]["metadata"]["resourceVersion"]
        kubectl("apply", "--server-side", "-f", str(ROOT / "examples/s3-to-azure"))
        again = json.loads(kubectl("get", "connector", "sales-exports", "-n", "acme", "-o", "json"))
        assert again["metadata"]["resourceVersion"] == rv
        kubectl("delete", "namespace", "acme", "--wait=false")
