"""A Kubernetes API server for end-to-end tests, on 127.0.0.1.

kmock (PyPI `kmock`, pinned in tests/bootstrap.sh) serves the HTTP endpoint:
its aiohttp server, URL parsing, discovery documents (the bundled built-in
resources, plus every CRD created here), Status errors and request log. Its own
emulator keeps objects as plain dicts with no versions, so this adapter supplies
what kube-rs and kubectl rely on, and nothing more:

- uid, creationTimestamp, generation and resourceVersion on create; one global
  resourceVersion counter bumped on every change; 409 Conflict when a write
  carries a stale resourceVersion; 409 AlreadyExists on a second create;
- a write that changes nothing keeps the resourceVersion and sends no watch
  event (a controller that patches its own status would otherwise loop);
- PUT, merge, strategic merge (as merge), JSON and server-side apply patches;
  apply creates a missing object, tracks field managers, removes fields a
  manager stops applying, and answers 409 Conflict when a manager applies,
  without force, a field another manager set to another value (leader election
  with kube-lease-manager depends on it);
- the status subresource: writes to the object ignore `status`, writes to
  `/status` change only `status`;
- finalizers and deletionTimestamp; garbage collection of dependents through
  ownerReferences (uid) when their owner goes;
- list with `kind`/`apiVersion`/`metadata.resourceVersion`, label and field
  selectors on list and watch, watch from a resourceVersion (410 Gone when it is
  older than the retained history), bookmarks, timeoutSeconds, and metadata-only
  (PartialObjectMetadata) answers;
- namespaces must exist before objects are created in them, and take their
  objects with them; CRDs become served resources when created; Secrets'
  `stringData` becomes base64 `data`; protobuf bodies get 415 (kubectl's typed
  `create` sends protobuf: use `kubectl apply --server-side`).

Not modelled: authentication and authorization (every request is admitted;
bearer tokens are recorded in the request log), admission, validation against
schemas, defaulting, and the controllers of a real cluster (the test kubelet
under tests/kubelet plays the one Ferry needs).

Run: python tests/kapi/kapi.py --port 18080 [--ready-file PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import copy
import datetime
import json
import re
import secrets
import signal
import sys
import traceback
import uuid
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal import rendering  # the parsed request type kmock hands to _handle

# Watch events kept for clients resuming from a resourceVersion (--history).
HISTORY = 20_000

Obj = dict[str, Any]
Path = tuple[str, ...]


class ApiError(kmock.KubernetesError):
    """A Kubernetes Status error with a machine reason and details."""


def error(code: int, reason: str, message: str, **details: Any) -> ApiError:
    return ApiError(status=code, reason=reason, message=message, details=details or {"causes": []})


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- JSON documents --------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386. Strategic-merge directives ($patch, $setElementOrder...) are dropped."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(doc: Any, ops: list[Obj]) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)

    def parse(pointer: str) -> list[str]:
        if pointer == "":
            return []
        if not pointer.startswith("/"):
            raise error(422, "Invalid", f"invalid JSON pointer {pointer!r}")
        return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]

    def walk(parts: list[str]) -> tuple[Any, str]:
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, parts[-1]

    def get(parts: list[str]) -> Any:
        cur = doc
        for p in parts:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def remove(parts: list[str]) -> Any:
        parent, last = walk(parts)
        return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)

    def add(parts: list[str], value: Any) -> None:
        nonlocal doc
        if not parts:
            doc = value
            return
        parent, last = walk(parts)
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value

    for op in ops:
        try:
            kind, path = op["op"], parse(op["path"])
            if kind == "test":
                if get(path) != op["value"]:
                    raise error(422, "Invalid", f"test operation failed at {op['path']}")
            elif kind == "remove":
                remove(path)
            elif kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind in ("move", "copy"):
                src = parse(op["from"])
                value = remove(src) if kind == "move" else copy.deepcopy(get(src))
                add(path, value)
            else:
                raise error(422, "Invalid", f"unknown JSON patch operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise error(422, "Invalid", f"JSON patch {op!r} does not apply: {e}") from None
    return doc


def leaves(doc: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Every leaf of a document by path; lists and empty maps are leaves."""
    if isinstance(doc, dict) and doc:
        out: dict[Path, Any] = {}
        for k, v in doc.items():
            out |= leaves(v, (*prefix, k))
        return out
    return {prefix: doc}


def get_path(doc: Any, path: Path) -> Any:
    for p in path:
        if not isinstance(doc, dict) or p not in doc:
            return None
        doc = doc[p]
    return doc


def delete_path(doc: Obj, path: Path) -> None:
    """Removes a leaf and the maps it leaves empty."""
    if not path:
        return
    parent = get_path(doc, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)
        if not parent and len(path) > 1:
            delete_path(doc, path[:-1])


def overlaps(a: Path, b: Path) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


# Fields the server owns: never tracked for managers, never removed by apply.
SERVER_FIELDS: tuple[Path, ...] = (
    ("apiVersion",),
    ("kind",),
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "uid"),
    ("metadata", "resourceVersion"),
    ("metadata", "generation"),
    ("metadata", "creationTimestamp"),
    ("metadata", "deletionTimestamp"),
    ("metadata", "managedFields"),
)


def tracked(paths: dict[Path, Any]) -> dict[Path, Any]:
    return {p: v for p, v in paths.items() if not any(overlaps(p, s) and len(p) >= len(s) for s in SERVER_FIELDS)}


# --- selectors -------------------------------------------------------------

_TERM = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<nkey>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<val>[\w./-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?)\s*(?:,|$)"
)


def label_selector(text: str | None):
    """A predicate on a labels dict, from the selector syntax kubectl and kube-rs send."""
    if not text:
        return lambda labels: True
    terms = []
    pos = 0
    while pos < len(text):
        m = _TERM.match(text, pos)
        if not m or m.end() == pos:
            raise error(400, "BadRequest", f"unable to parse requirement in label selector {text!r}")
        terms.append(m)
        pos = m.end()

    def check(labels: dict[str, str]) -> bool:
        for m in terms:
            if m["not"]:
                if m["nkey"] in labels:
                    return False
            elif m["op"] in ("=", "=="):
                if labels.get(m["key"]) != m["val"]:
                    return False
            elif m["op"] == "!=":
                if labels.get(m["key"]) == m["val"]:
                    return False
            elif m["setop"]:
                values = {v.strip() for v in m["set"].split(",") if v.strip()}
                inside = m["key"] in labels and labels[m["key"]] in values
                if inside != (m["setop"] == "in"):
                    return False
            elif m["key"] not in labels:
                return False
        return True

    return check


def field_selector(text: str | None):
    """`a.b=v`, `a.b==v` and `a.b!=v` terms on any dotted field path."""
    if not text:
        return lambda obj: True
    terms = []
    for term in text.split(","):
        m = re.fullmatch(r"\s*([\w.]+)\s*(==|=|!=)\s*([^,]*?)\s*", term)
        if not m:
            raise error(400, "BadRequest", f"invalid field selector {text!r}")
        terms.append((tuple(m[1].split(".")), m[2] != "!=", m[3]))

    def check(obj: Obj) -> bool:
        for path, equal, value in terms:
            found = get_path(obj, path)
            found = "" if found is None else str(found)
            if (found == value) != equal:
                return False
        return True

    return check


# --- the server ------------------------------------------------------------


class Kind:
    """What the server knows of one resource."""

    def __init__(self, group: str, version: str, plural: str, info: kmock.ResourceInfo) -> None:
        self.group, self.version, self.plural = group, version, plural
        self.kind = info.kind or plural.capitalize()
        self.namespaced = bool(info.namespaced)
        self.status = "status" in info.subresources
        self.api_version = f"{group}/{version}" if group else version

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)


class Api(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the semantics listed in the module docstring."""

    def __init__(self, history: int = HISTORY) -> None:
        super().__init__()
        self.resources.load_bundled()
        self.keep = history
        self.store: dict[tuple[str, str, str | None, str], Obj] = {}
        # Per object: field manager -> (operation, paths it owns).
        self.managers: dict[tuple[str, str, str | None, str], dict[str, tuple[str, set[Path]]]] = {}
        self.version = 0
        self.history: list[tuple[int, tuple[str, str], str, Obj]] = []
        self.changed = asyncio.Condition()
        namespaces = self._kind("", "v1", "namespaces")
        for ns in ("default", "kube-system", "kube-public"):
            self._record(namespaces, "ADDED", self._create(namespaces, None, {"metadata": {"name": ns}}, "kapi"))

    # -- lookup --

    def _kind(self, group: str, version: str, plural: str) -> Kind:
        for res in self.resources:
            if res.group == group and res.version == version and res.plural == plural:
                return Kind(group, version, plural, self.resources[res])
        raise error(404, "NotFound", f"the server could not find the requested resource ({plural}.{group or 'core'}/{version})")

    def _kind_of(self, obj: Obj) -> Kind | None:
        api_version = obj.get("apiVersion", "")
        group, _, version = api_version.rpartition("/")
        for res in self.resources:
            info = self.resources[res]
            if res.group == group and res.version == version and info.kind == obj.get("kind"):
                return Kind(group, version, res.plural, info)
        return None

    # -- events --

    def _record(self, kind: Kind, type_: str, obj: Obj) -> None:
        self.history.append((int(obj["metadata"]["resourceVersion"]), kind.key, type_, copy.deepcopy(obj)))
        if len(self.history) > self.keep:
            del self.history[: len(self.history) - self.keep]

    async def _emit(self, kind: Kind, type_: str, obj: Obj) -> None:
        self._record(kind, type_, obj)
        async with self.changed:
            self.changed.notify_all()

    def _bump(self) -> str:
        self.version += 1
        return str(self.version)

    # -- writes --

    @staticmethod
    def _normalise(kind: Kind, obj: Obj) -> Obj:
        """What the API server does to every write of some kinds."""
        if kind.key == ("", "secrets") and "stringData" in obj:
            data = obj.setdefault("data", {}) or {}
            for k, v in (obj.pop("stringData") or {}).items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            obj["data"] = data
        return obj

    def _create(self, kind: Kind, namespace: str | None, body: Obj, manager: str) -> Obj:
        obj = self._normalise(kind, copy.deepcopy(body))
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            else:
                raise error(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value")
        if kind.namespaced:
            if meta.get("namespace") not in (None, namespace):
                raise error(400, "BadRequest", "the namespace of the object does not match the namespace of the request")
            if not namespace:
                raise error(400, "BadRequest", f"{kind.plural} must be created in a namespace")
            if ("", "namespaces", None, namespace) not in self.store:
                raise error(404, "NotFound", f'namespaces "{namespace}" not found', name=namespace, kind="namespaces")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
            namespace = None
        key = (kind.group, kind.plural, namespace, meta["name"])
        if key in self.store:
            raise error(409, "AlreadyExists", f'{kind.plural}.{kind.group} "{meta["name"]}" already exists', name=meta["name"], group=kind.group, kind=kind.plural)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if kind.status:
            obj.pop("status", None)
        meta.pop("deletionTimestamp", None)
        meta.pop("managedFields", None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1, resourceVersion=self._bump())
        self.store[key] = obj
        self.managers[key] = {}
        self._own(key, manager, "Update", {}, obj)
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._serve_crd(obj)
        return obj

    def _own(self, key, manager: str, operation: str, before: Obj, after: Obj) -> None:
        """An update: the changed fields move to `manager`; removed ones leave everyone."""
        old, new = tracked(leaves(before)), tracked(leaves(after))
        changed = {p for p in new if old.get(p, object()) != new[p]}
        gone = {p for p in old if p not in new}
        owners = self.managers.setdefault(key, {})
        for name, (op, paths) in list(owners.items()):
            paths -= {p for p in paths if any(overlaps(p, c) for c in changed | gone)}
            if not paths:
                del owners[name]
        if changed:
            op, paths = owners.get(manager, (operation, set()))
            owners[manager] = (op, paths | changed)

    def _apply(self, kind: Kind, key, current: Obj | None, config: Obj, manager: str, force: bool) -> Obj:
        """Server-side apply of `config` by `manager` over `current` (None: create)."""
        applied = tracked(leaves(config))
        owners = self.managers.setdefault(key, {})
        conflicts = []
        if current is not None:
            for name, (op, paths) in owners.items():
                if name == manager:
                    continue
                for p in paths:
                    for a, value in applied.items():
                        if overlaps(p, a) and get_path(current, a) != value:
                            conflicts.append((name, ".".join(a)))
        if conflicts and not force:
            causes = [{"type": "FieldManagerConflict", "message": f'conflict with "{m}"', "field": f".{f}"} for m, f in conflicts]
            raise error(409, "Conflict", "Apply failed with {} conflict(s): {}".format(
                len(conflicts), "; ".join(f'conflict with "{m}": .{f}' for m, f in conflicts)), causes=causes)
        # Forced: the fields in conflict change hands; a field applied with the
        # value it already has is shared.
        for name, (op, paths) in list(owners.items()):
            if name != manager:
                paths -= {
                    p for p in paths
                    if any(overlaps(p, a) and get_path(current, a) != v for a, v in applied.items())
                }
                if not paths:
                    del owners[name]
        result = copy.deepcopy(current) if current is not None else {}
        # Fields this manager applied before and applies no more, owned by nobody else, go.
        previous = owners.get(manager, ("Apply", set()))[1] if owners.get(manager, ("", set()))[0] == "Apply" else set()
        others = set().union(*(paths for name, (_, paths) in owners.items() if name != manager))
        for p in previous:
            if p not in applied and not any(overlaps(p, o) for o in others):
                delete_path(result, p)
        result = merge_patch(result, config)
        owners[manager] = ("Apply", set(applied))
        return result

    async def _write(self, kind: Kind, key, before: Obj, after: Obj, subresource: str | None, manager: str, operation: str = "Update") -> Obj:
        """Stores `after` in place of `before` with the subresource rules; a no-op changes nothing."""
        after = self._normalise(kind, after)
        if kind.status:
            if subresource == "status":
                status = after.get("status")
                after = copy.deepcopy(before)
                if status is None:
                    after.pop("status", None)
                else:
                    after["status"] = status
            elif "status" in before:
                after["status"] = copy.deepcopy(before["status"])
            else:
                after.pop("status", None)
        meta, old_meta = after.setdefault("metadata", {}), before["metadata"]
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "resourceVersion"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if "deletionTimestamp" in old_meta:
            meta["deletionTimestamp"] = old_meta["deletionTimestamp"]
        else:
            meta.pop("deletionTimestamp", None)
        meta.pop("managedFields", None)
        after["apiVersion"], after["kind"] = kind.api_version, kind.kind
        if after == before:
            return before
        spec_before = {k: v for k, v in before.items() if k not in ("metadata", "status")}
        spec_after = {k: v for k, v in after.items() if k not in ("metadata", "status")}
        if spec_before != spec_after:
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = self._bump()
        if operation == "Update":
            self._own(key, manager, "Update", before, after)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return await self._remove(kind, key, after)
        self.store[key] = after
        await self._emit(kind, "MODIFIED", after)
        return after

    async def _remove(self, kind: Kind, key, obj: Obj) -> Obj:
        self.store.pop(key, None)
        self.managers.pop(key, None)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._bump()
        await self._emit(kind, "DELETED", obj)
        await self._collect(obj["metadata"]["uid"])
        if kind.key == ("", "namespaces"):
            # The namespace controller's job: everything in it goes too.
            for dkey, dep in list(self.store.items()):
                dkind = self._kind_of(dep)
                if dkey[2] == obj["metadata"]["name"] and dkey in self.store and dkind is not None:
                    await self._delete(dkind, dkey, dep)
        return obj

    async def _delete(self, kind: Kind, key, obj: Obj, orphan: bool = False) -> Obj:
        if obj["metadata"].get("finalizers"):
            if obj["metadata"].get("deletionTimestamp"):
                return obj
            after = copy.deepcopy(obj)
            after["metadata"]["deletionTimestamp"] = now()
            after["metadata"]["resourceVersion"] = self._bump()
            self.store[key] = after
            await self._emit(kind, "MODIFIED", after)
            return after
        if orphan:
            uid = obj["metadata"]["uid"]
            for dkey, dep in list(self.store.items()):
                refs = dep["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    after = copy.deepcopy(dep)
                    after["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    dkind = self._kind_of(dep)
                    if dkind is not None:
                        await self._write(dkind, dkey, dep, after, None, "kapi-garbage-collector")
        return await self._remove(kind, key, obj)

    async def _collect(self, uid: str) -> None:
        """Garbage collection: objects owned by `uid` go with it (background propagation)."""
        for key, dep in list(self.store.items()):
            refs = dep["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs) and key in self.store:
                kind = self._kind_of(dep)
                if kind is not None:
                    await self._delete(kind, key, dep)

    def _serve_crd(self, crd: Obj) -> None:
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        for v in spec.get("versions", []):
            if not v.get("served", True):
                continue
            res = kmock.resource(spec["group"], v["name"], names["plural"])
            self.resources[res] = kmock.ResourceInfo(
                kind=names.get("kind"),
                singular=names.get("singular"),
                namespaced=spec.get("scope") == "Namespaced",
                verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources={"status"} if "status" in (v.get("subresources") or {}) else set(),
            )

    # -- HTTP --

    async def _serve_version(self, request: rendering.Request) -> Any:
        """Discovery of one group version, with subresources listed as the API server does."""
        assert request.resource is not None
        group, version = request.resource.group or "", request.resource.version
        listed = []
        for res in self.resources:
            if res.group != group or res.version != version:
                continue
            info = self.resources[res]
            kind = info.kind or res.plural.capitalize()
            listed.append({
                "name": res.plural, "singularName": info.singular or kind.lower(), "kind": kind,
                "namespaced": bool(info.namespaced), "verbs": sorted(info.verbs),
                "shortNames": sorted(info.shortnames), "categories": sorted(info.categories),
            })
            for sub in sorted(info.subresources):
                listed.append({
                    "name": f"{res.plural}/{sub}", "singularName": "", "kind": kind,
                    "namespaced": bool(info.namespaced), "verbs": ["get", "patch", "update"],
                })
        if not listed:
            raise error(404, "NotFound", f"the server could not find the requested resource ({group}/{version})")
        return {"apiVersion": "v1", "kind": "APIResourceList",
                "groupVersion": f"{group}/{version}" if group else version, "resources": listed}

    def _resource_path(self, path: str) -> tuple[str, str, str, str | None, str | None, str | None] | None:
        """(group, version, plural, namespace, name, subresource) of a resource URL.

        kmock's own parser reads `/api/v1/namespaces` as the start of a
        namespaced path and fails, so resource URLs are parsed here.
        """
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        # /api/v1/namespaces/NAME/status is a namespace's own subresource;
        # /.../namespaces/NAME/PLURAL[/...] is a namespaced resource.
        if rest[0] == "namespaces" and len(rest) >= 3 and not (
            group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")
        ):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            return None
        rest += [None] * (3 - len(rest))
        return group, version, rest[0], namespace, rest[1], rest[2]

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw.path == "/openapi/v3":
            # No schemas: kubectl then leaves validation to the server (none here).
            return self._json({"paths": {}})
        parsed = self._resource_path(raw.path)
        if parsed is None:
            return await super().__call__(raw)  # discovery, /version: kmock's own
        body = await raw.read()
        if "protobuf" in raw.headers.get("Content-Type", ""):
            # client-go falls back to JSON on 415, as from any server without protobuf.
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": 415,
                "reason": "UnsupportedMediaType", "message": "this server speaks JSON only",
            }, status=415)
        group, version, plural, namespace, name, subresource = parsed
        request = rendering.Request(
            id=len(self._requests), raw_request=raw, url=raw.url, method=raw.method,
            params=dict(raw.query), headers=dict(raw.headers), body=body,
            text=body.decode("utf-8", "replace"),
            resource=kmock.resource(group, version, plural),
            namespace=namespace, name=name, subresource=subresource,
        )
        self._requests.append(request)
        try:
            return await self._serve_resource(request)
        except ApiError as e:
            return await self._render_error(e)
        except Exception as e:  # a bug here: tell the client, and the log
            traceback.print_exc()
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": 500, "reason": "InternalError", "message": repr(e),
            }, status=500)

    async def _serve_resource(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        assert request.resource is not None and request.resource.plural
        raw = request._raw_request
        assert raw is not None
        kind = self._kind(request.resource.group or "", request.resource.version or "", request.resource.plural)
        ns = request.namespace if kind.namespaced else None
        params = request.params
        manager = params.get("fieldManager") or request.headers.get("User-Agent", "unknown").split("/")[0]
        method = raw.method.upper()
        if request.subresource not in (None, "status"):
            raise error(404, "NotFound", f"subresource {request.subresource!r} is not served")
        if request.subresource == "status" and not kind.status:
            raise error(404, "NotFound", f"{kind.plural} have no status subresource")
        meta_only = "as=PartialObjectMetadata" in request.headers.get("Accept", "")

        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(raw, kind, ns, request.name, params, meta_only)
        if method == "GET" and request.name is None:
            return self._json(self._list(kind, ns, params, meta_only))
        key = (kind.group, kind.plural, ns, request.name)
        current = self.store.get(key) if request.name else None
        if method == "GET":
            if current is None:
                raise self._not_found(kind, request.name)
            return self._json(self._meta_only(current) if meta_only else current)
        if method == "POST" and request.name is None:
            body = self._body(request)
            obj = self._create(kind, ns or request.namespace, body, manager)
            await self._emit(kind, "ADDED", obj)
            return self._json(obj, 201)
        if method == "PUT" and request.name:
            if current is None:
                raise self._not_found(kind, request.name)
            body = self._body(request)
            self._check_version(kind, current, body)
            return self._json(await self._write(kind, key, current, body, request.subresource, manager))
        if method == "PATCH" and request.name:
            return await self._patch(request, kind, key, current, manager)
        if method == "DELETE" and request.name:
            if current is None:
                raise self._not_found(kind, request.name)
            options = self._body(request, required=False) or {}
            policy = params.get("propagationPolicy") or options.get("propagationPolicy")
            pre = (options.get("preconditions") or {}).get("resourceVersion")
            if pre and pre != current["metadata"]["resourceVersion"]:
                raise self._conflict(kind, request.name)
            return self._json(await self._delete(kind, key, current, orphan=policy == "Orphan"))
        raise error(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path}")

    async def _patch(self, request, kind: Kind, key, current: Obj | None, manager: str):
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype == "application/apply-patch+yaml":
            config = self._body(request, yaml_ok=True)
            if not request.params.get("fieldManager"):
                raise error(422, "Invalid", "PatchOptions.meta.k8s.io is invalid: fieldManager: Required value: is required for apply patch")
            force = request.params.get("force") in ("true", "1")
            if current is None:
                if request.subresource == "status":
                    raise self._not_found(kind, key[3])
                meta = config.setdefault("metadata", {})
                meta.setdefault("name", key[3])
                obj = self._create(kind, key[2], config, manager)
                self.managers[key] = {manager: ("Apply", set(tracked(leaves(config))))}
                await self._emit(kind, "ADDED", obj)
                return self._json(obj, 201)
            self._check_version(kind, current, config)
            after = self._apply(kind, key, current, config, manager, force)
            return self._json(await self._write(kind, key, current, after, request.subresource, manager, "Apply"))
        if current is None:
            raise self._not_found(kind, key[3])
        body = self._body(request)
        if ctype == "application/json-patch+json":
            after = json_patch(current, body)
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            self._check_version(kind, current, body)
            after = merge_patch(current, body)
        else:
            raise error(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype!r}")
        return self._json(await self._write(kind, key, current, after, request.subresource, manager))

    def _list(self, kind: Kind, ns: str | None, params, meta_only: bool) -> Obj:
        labels = label_selector(params.get("labelSelector"))
        fields = field_selector(params.get("fieldSelector"))
        items = [
            self._meta_only(o) if meta_only else o
            for (g, p, ons, _), o in sorted(self.store.items(), key=lambda kv: (kv[0][2] or "", kv[0][3]))
            if (g, p) == kind.key and (ns is None or ons == ns)
            and labels(o["metadata"].get("labels") or {}) and fields(o)
        ]
        if meta_only:
            return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                    "metadata": {"resourceVersion": str(self.version)}, "items": items}
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self.version)}, "items": items}

    async def _watch(self, raw, kind: Kind, ns, name, params, meta_only: bool):
        labels = label_selector(params.get("labelSelector"))
        fields = field_selector(params.get("fieldSelector"))
        timeout = float(params.get("timeoutSeconds") or 1800)
        bookmarks = params.get("allowWatchBookmarks") in ("true", "1")

        def wanted(obj: Obj) -> bool:
            m = obj["metadata"]
            return ((ns is None or m.get("namespace") == ns) and (name is None or m.get("name") == name)
                    and labels(m.get("labels") or {}) and fields(obj))

        since = params.get("resourceVersion") or "0"
        backlog: list[tuple[str, Obj]] = []
        if since == "0":
            since_rv = self.version
            backlog = [("ADDED", o) for (g, p, _, _), o in self.store.items() if (g, p) == kind.key and wanted(o)]
        else:
            since_rv = int(since)
            oldest = self.history[0][0] if self.history else self.version + 1
            if since_rv < oldest - 1 and since_rv < self.version:
                raise error(410, "Expired", f"too old resource version: {since_rv} ({oldest - 1})")
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(raw)

        async def send(type_: str, obj: Obj) -> None:
            await resp.write(json.dumps({"type": type_, "object": self._meta_only(obj) if meta_only else obj}).encode() + b"\n")

        for type_, obj in backlog:
            await send(type_, obj)
        deadline = asyncio.get_running_loop().time() + timeout
        seen = since_rv
        try:
            while True:
                # Events recorded while this stream was writing are picked up
                # on the next pass: `seen` only moves past what was looked at.
                start = bisect.bisect_right(self.history, seen, key=lambda e: e[0])
                for rv, key, type_, obj in self.history[start:]:
                    seen = rv
                    if key == kind.key and wanted(obj):
                        await send(type_, obj)
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                quiet = False
                async with self.changed:
                    if self.history and self.history[-1][0] > seen:
                        continue
                    try:
                        await asyncio.wait_for(self.changed.wait(), timeout=min(left, 5.0))
                    except TimeoutError:
                        quiet = True
                if quiet and bookmarks:
                    await send("BOOKMARK", {"kind": kind.kind, "apiVersion": kind.api_version,
                                            "metadata": {"resourceVersion": str(seen)}})
        except (ConnectionResetError, asyncio.CancelledError):
            return resp
        await resp.write_eof()
        return resp

    # -- helpers --

    def _body(self, request, required: bool = True, yaml_ok: bool = False) -> Any:
        if not request.body:
            if required:
                raise error(400, "BadRequest", "the request has no body")
            return None
        try:
            return json.loads(request.body)
        except ValueError:
            if yaml_ok:
                try:
                    return yaml.safe_load(request.body)
                except yaml.YAMLError as e:
                    raise error(400, "BadRequest", f"invalid YAML: {e}") from None
            raise error(400, "BadRequest", "the body is not JSON") from None

    def _check_version(self, kind: Kind, current: Obj, body: Any) -> None:
        rv = (body or {}).get("metadata", {}).get("resourceVersion") if isinstance(body, dict) else None
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise self._conflict(kind, current["metadata"]["name"])

    def _conflict(self, kind: Kind, name: str) -> ApiError:
        return error(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural}.{kind.group} "{name}": '
                     "the object has been modified; please apply your changes to the latest version and try again",
                     name=name, group=kind.group, kind=kind.plural)

    def _not_found(self, kind: Kind, name: str | None) -> ApiError:
        what = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
        return error(404, "NotFound", f'{what} "{name}" not found', name=name, group=kind.group, kind=kind.plural)

    @staticmethod
    def _meta_only(obj: Obj) -> Obj:
        return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]}

    @staticmethod
    def _json(obj: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.json_response(obj, status=status)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # Kubernetes clients read `reason` and `code`; no traceback for expected errors.
        if isinstance(exc, ApiError):
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": exc.status, "reason": exc.reason, "message": exc.message, "details": exc.details,
            }, status=exc.status)
        return await super()._render_error(exc)


async def serve(port: int, ready_file: str | None, history: int) -> None:
    api = Api(history)
    async with api, kmock.Server(api, port=port) as server:
        print(f"kapi: serving the Kubernetes API on {server.url}", flush=True)
        if ready_file:
            with open(ready_file, "w") as f:
                f.write(str(server.url))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--ready-file", help="written with the URL once the server listens")
    parser.add_argument("--history", type=int, default=HISTORY, help="watch events kept for resuming")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.ready_file, args.history))


if __name__ == "__main__":
    sys.exit(main())
