"""Checks of the Helm chart: lint, render with default values and with every
toggle on, the resources rendered (exactly those expected), the operator's pod
security and RBAC, values that break the schema fail, and the alert rules pass
promtool. Run by tests/chart/run.sh with the test bootstrap's PATH."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "ferry"
checks = 0


def ok(cond, what):
    global checks
    if not cond:
        sys.exit(f"chart check failed: {what}")
    checks += 1


def run(*args, expect_ok=True):
    p = subprocess.run(args, capture_output=True, text=True)
    ok((p.returncode == 0) == expect_ok, f"{' '.join(args)} -> {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def render(*sets):
    args = ["helm", "template", "ferry", str(CHART), "--namespace", "ferry-system"]
    for s in sets:
        args += ["--set", s]
    docs = [d for d in yaml.safe_load_all(run(*args)) if d]
    for d in docs:
        ok({"apiVersion", "kind", "metadata"} <= d.keys(), f"a rendered object has apiVersion, kind, metadata: {d}")
    return docs


def kinds(docs):
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


ALL_ON = [
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.dashboard.enabled=true",
    "watchNamespaces={tenant-a,tenant-b}",
]

run("helm", "lint", str(CHART))
run("helm", "lint", str(CHART), *sum((["--set", s] for s in ALL_ON), []))

default = render()
ok(
    kinds(default)
    == sorted(
        [
            "ClusterRole/ferry-admin",
            "ClusterRole/ferry-edit",
            "ClusterRole/ferry-view",
            "ClusterRole/ferry-operator",
            "ClusterRole/ferry-operator-namespaces",
            "ClusterRoleBinding/ferry-operator",
            "ClusterRoleBinding/ferry-operator-namespaces",
            "Deployment/ferry-operator",
            "NetworkPolicy/ferry-operator",
            "PodDisruptionBudget/ferry-operator",
            "Role/ferry-operator-leader",
            "RoleBinding/ferry-operator-leader",
            "Service/ferry-operator-metrics",
            "ServiceAccount/ferry-operator",
        ]
    ),
    f"default render names only the expected resources: {kinds(default)}",
)
all_on = render(*ALL_ON)
expected_extra = {
    "ConfigMap/ferry-operator-dashboard",
    "PrometheusRule/ferry-operator",
    "ServiceMonitor/ferry-operator",
}
got = set(kinds(all_on))
ok(expected_extra <= got, f"toggles add ServiceMonitor, PrometheusRule, dashboard: {got}")
ok("ClusterRoleBinding/ferry-operator" not in got, "watchNamespaces replaces the cluster-wide binding")
bindings = [d for d in all_on if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "ferry-operator"]
ok(sorted(b["metadata"]["namespace"] for b in bindings) == ["tenant-a", "tenant-b"], "one RoleBinding per watched namespace")
dashboard = next(d for d in all_on if d["kind"] == "ConfigMap")
json.loads(dashboard["data"]["ferry.json"])
ok(dashboard["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard labelled for Grafana's sidecar")
rule = next(d for d in all_on if d["kind"] == "PrometheusRule")
ok(len(rule["spec"]["groups"][0]["rules"]) >= 6, "alert rules rendered into the PrometheusRule")

# The operator Deployment: replicas, probes, restricted security context.
dep = next(d for d in default if d["kind"] == "Deployment")
spec = dep["spec"]["template"]["spec"]
ok(dep["spec"]["replicas"] == 2, "two replicas by default")
c = spec["containers"][0]
ok(c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz", "probes")
sc, psc = c["securityContext"], spec["securityContext"]
ok(sc["allowPrivilegeEscalation"] is False, "no privilege escalation")
ok(sc["capabilities"]["drop"] == ["ALL"], "capabilities dropped")
ok(sc["readOnlyRootFilesystem"] is True, "read-only root filesystem")
ok(psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault", "non-root, seccomp")
ok(spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname", "spread over nodes")
ok(any(a.startswith("--runner-image=ghcr.io/ferry-dev/job-runner:") for a in c["args"]), "runner image from values")
ok(c["resources"]["limits"]["memory"], "memory limit")

# RBAC: no wildcard, Secrets `get` only, no escalate/bind/impersonate.
for d in default:
    if d["kind"] in ("ClusterRole", "Role"):
        for r in d.get("rules", []):
            flat = r.get("verbs", []) + r.get("resources", []) + r.get("apiGroups", [])
            ok("*" not in flat, f"no wildcard in {d['metadata']['name']}: {r}")
            ok(not {"escalate", "bind", "impersonate"} & set(r["verbs"]), f"no escalate/bind/impersonate: {r}")
            if "secrets" in r.get("resources", []):
                ok(r["verbs"] == ["get"], f"Secrets: get only: {r}")
view = next(d for d in default if d["metadata"]["name"] == "ferry-view")
ok(view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true", "ferry-view folds into view")

# Lineage: the URL reaches the operator's arguments; plain http is refused.
lineage = render("lineage.url=https://lineage.example.com/api/v1/lineage")
args = next(d for d in lineage if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
ok("--lineage-url=https://lineage.example.com/api/v1/lineage" in args, f"lineage URL passed on: {args}")
ok(not any(a.startswith("--lineage-url") for a in next(d for d in default if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]), "no lineage by default")

# Values that break the schema fail at install.
for bad in ["operator.replicas=0", "operator.logFormat=xml", "operatr.replicas=2", "metrics.port=80", "watchNamespaces={Bad_NS}", "lineage.url=http://lineage.example.com"]:
    run("helm", "template", "ferry", str(CHART), "--set", bad, expect_ok=False)

# The alert rules.
run("promtool", "check", "rules", str(CHART / "files" / "alerts.yaml"))

print(f"chart: {checks} checks passed")
