"""Checks of the Helm chart: lint, render with default values and with every
toggle on, the resources rendered (exactly those expected), the operator's pod
security and RBAC, values that break the schema fail, and the alert rules pass
promtool. Run by tests/chart/run.sh with the test bootstrap's PATH."""

import json
import re
import subprocess
import sys
import tempfile
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
    args = []
    for s in sets:
        args += ["--set", s]
    return render_args(args)


def render_args(extra):
    args = ["helm", "template", "ferry", str(CHART), "--namespace", "ferry-system", *extra]
    docs = [d for d in yaml.safe_load_all(run(*args)) if d]
    for d in docs:
        ok({"apiVersion", "kind", "metadata"} <= d.keys(), f"a rendered object has apiVersion, kind, metadata: {d}")
    return docs


def operator_args(docs):
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def kinds(docs):
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


ALL_ON = [
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.dashboard.enabled=true",
    "tenantNamespaces={tenant-a,tenant-b}",
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
            "ClusterRoleBinding/ferry-operator-namespaces",
            "Deployment/ferry-operator",
            "NetworkPolicy/ferry-operator",
            "PodDisruptionBudget/ferry-operator",
            "Role/ferry-operator-leader",
            "RoleBinding/ferry-operator-leader",
            "Role/ferry-operator-api-server-endpoints",
            "RoleBinding/ferry-operator-api-server-endpoints",
            "Service/ferry-operator-metrics",
            "ServiceAccount/ferry-operator",
            "ValidatingAdmissionPolicy/ferry-operator-run-objects",
            "ValidatingAdmissionPolicyBinding/ferry-operator-run-objects",
            "ValidatingAdmissionPolicy/ferry-operator-run-identity",
            "ValidatingAdmissionPolicyBinding/ferry-operator-run-identity",
            "ValidatingAdmissionPolicy/ferry-operator-run-rights",
            "ValidatingAdmissionPolicyBinding/ferry-operator-run-rights",
            "ValidatingAdmissionPolicy/ferry-operator-attribution",
            "ValidatingAdmissionPolicyBinding/ferry-operator-attribution",
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
ok("ClusterRoleBinding/ferry-operator" not in got, "tenants get RoleBindings, not a cluster-wide binding")
bindings = [d for d in all_on if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "ferry-operator"]
ok(sorted(b["metadata"]["namespace"] for b in bindings) == ["tenant-a", "tenant-b"], "one RoleBinding per tenant namespace")
ok(all(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ferry-operator"}
       for b in bindings), "tenant RoleBindings grant the operator's ClusterRole")
tenant_args = next(d for d in all_on if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
ok("--tenant-namespaces=tenant-a,tenant-b" in tenant_args, f"the operator acts on its tenants only: {tenant_args}")
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

# Attack: the operator is taken over. By default it holds no right outside the
# tenant namespaces (none listed: none at all), and nowhere can it patch a pod
# or a run's RBAC objects, nor list Secrets.
def hijacked_operator_rights(docs):
    """(namespace or '*', apiGroup, resource, verb) the operator's ServiceAccount holds."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    rights = set()
    for b in docs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == "ferry-operator" for s in b["subjects"]):
            continue
        scope = b["metadata"].get("namespace", "*") if b["kind"] == "RoleBinding" else "*"
        ref = b["roleRef"]
        role = roles[(ref["kind"], None if ref["kind"] == "ClusterRole" else scope, ref["name"])]
        for r in role.get("rules", []):
            for g in r.get("apiGroups", []):
                for res in r.get("resources", []):
                    for v in r["verbs"]:
                        rights.add((scope, g, res, v))
    return rights


def hijacked_operator_cannot_reach_other_namespaces(docs, tenants):
    rights = hijacked_operator_rights(docs)
    wide = {r for r in rights if r[0] == "*" and r[2] not in ("namespaces",)}
    ok(not wide, f"no cluster-wide right but reading namespaces: {sorted(wide)}")
    ok({r[0] for r in rights} - {"*", "ferry-system", "default"} == set(tenants),
       f"rights only in the tenant namespaces {tenants}: {sorted({r[0] for r in rights})}")
    # In namespace default (unless it is a tenant): where the API server is.
    in_default = {r[1:] for r in rights if r[0] == "default"}
    ok("default" in tenants or in_default <= {("discovery.k8s.io", "endpointslices", "list")},
       f"in namespace default, listing EndpointSlices alone: {sorted(in_default)}")
    ok(not any(r[2] == "secrets" and r[3] != "get" for r in rights), "Secrets: get only")


def hijacked_operator_cannot_patch_pods_or_rbac(docs):
    for scope, group, res, verb in hijacked_operator_rights(docs):
        if res in ("pods", "serviceaccounts", "roles", "rolebindings", "networkpolicies"):
            ok(verb in ("get", "list", "watch", "create", "delete"),
               f"{res} are created and deleted, never {verb} ({scope})")


hijacked_operator_cannot_reach_other_namespaces(default, [])
hijacked_operator_cannot_reach_other_namespaces(all_on, ["tenant-a", "tenant-b"])
hijacked_operator_cannot_patch_pods_or_rbac(default)
hijacked_operator_cannot_patch_pods_or_rbac(all_on)
ok(not [a for a in next(d for d in default if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        if a.startswith(("--tenant-namespaces", "--cluster-wide"))], "no tenants and not cluster-wide by default")

# The cluster-wide mode, when asked for: one ClusterRoleBinding, tenant list ignored.
wide = render("clusterWide=true", "tenantNamespaces={tenant-a}")
ok("ClusterRoleBinding/ferry-operator" in kinds(wide), "clusterWide binds the ClusterRole everywhere")
ok(not [d for d in wide if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "ferry-operator"],
   "no tenant RoleBindings in cluster-wide mode")
ok("--cluster-wide" in next(d for d in wide if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
   "the operator is told it is cluster-wide")
hijacked_operator_cannot_patch_pods_or_rbac(wide)

# The admission policy: the chart installs on Kubernetes 1.30 and newer only,
# which serve ValidatingAdmissionPolicy v1; the policy is bound to deny; its
# expressions are tested in operator/tests/admission.rs against the builders'
# objects and against an operator that has been taken over.
ok(not {"ValidatingAdmissionPolicy/ferry-operator-run-objects", "ValidatingAdmissionPolicy/ferry-operator-run-identity"}
   & set(kinds(render("admissionPolicy.enabled=false"))), "admissionPolicy.enabled=false leaves the policies out")
identity = next(d for d in default if d["kind"] == "ValidatingAdmissionPolicy"
                and d["metadata"]["name"] == "ferry-operator-run-identity")
ok(identity["spec"]["failurePolicy"] == "Fail"
   and "system:serviceaccount:ferry-system:ferry-operator" in identity["spec"]["matchConditions"][0]["expression"],
   "the run-identity policy fails closed and leaves the operator's own requests alone")
run("helm", "template", "ferry", str(CHART), "--kube-version", "1.29.0", expect_ok=False)
run("helm", "template", "ferry", str(CHART), "--kube-version", "1.30.0")
vap = next(d for d in default if d["kind"] == "ValidatingAdmissionPolicy"
           and d["metadata"]["name"] == "ferry-operator-run-objects")
ok(vap["spec"]["failurePolicy"] == "Fail", "the policy fails closed")
ok("system:serviceaccount:ferry-system:ferry-operator" in vap["spec"]["matchConditions"][0]["expression"],
   "the policy is bound to the operator's ServiceAccount")
sys.path.insert(0, str(Path(__file__).parent))
import admission  # noqa: E402  (compiles every expression, as the API server would)

admission.policies_of(default)

# Attribution: a validating policy everywhere; the mutating ones only where the
# cluster serves MutatingAdmissionPolicy v1beta1; the operator told to record.
attribution = [d for d in default if d["metadata"]["name"].startswith("ferry-operator-attribution")]
ok([d["kind"] for d in attribution] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"],
   "attribution: the validating policy and its binding, no mutating policy without the API")
ok(all(d["spec"].get("failurePolicy", "Fail") == "Fail" for d in attribution if "Policy" in d["kind"] and "Binding" not in d["kind"]),
   "attribution fails closed")
args = operator_args(default)
ok("--record-requesters" in args and "--user-name=system:serviceaccount:ferry-system:ferry-operator" in args,
   "the operator records requesters, and knows its own user name")
mutating = render_args(["--api-versions", "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"])
maps = {d["metadata"]["name"]: d for d in mutating if d["kind"] == "MutatingAdmissionPolicy"}
ok(sorted(maps) == ["ferry-operator-attribution-connectors", "ferry-operator-attribution-runs"],
   f"mutating policies where the API is served: {sorted(maps)}")
for name, m in maps.items():
    expr = m["spec"]["mutations"][0]["applyConfiguration"]["expression"]
    key = "ferry.dev/created-by" if name.endswith("runs") else "ferry.dev/spec-changed-by"
    ok(m["spec"]["mutations"][0]["patchType"] == "ApplyConfiguration" and key in expr
       and "request.userInfo.username" in expr and m["spec"]["failurePolicy"] == "Fail",
       f"{name} writes {key} from the request's user")
ok(sum(d["kind"] == "MutatingAdmissionPolicyBinding" for d in mutating) == 2, "each mutating policy is bound")
off = render("attribution.enabled=false")
ok(not any(d["metadata"]["name"].startswith("ferry-operator-attribution") for d in off)
   and "--record-requesters" not in operator_args(off), "attribution.enabled=false: no policy, nothing recorded")

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

# Token audiences and the STS endpoint come from the chart, not from tenants.
default_args = next(d for d in default if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
ok("--token-audiences=sts.amazonaws.com,api://AzureADTokenExchange" in default_args, f"audiences: {default_args}")
ok(not any(a.startswith("--sts-endpoint") for a in default_args), "the regional STS endpoint by default")
ok("--allow-plain-http-loopback" not in default_args, "plain http is off by default")
ok("--dns-pod-labels=k8s-app=kube-dns" in default_args and "--dns-namespace=kube-system" in default_args,
   f"runs query the cluster DNS pods only: {default_args}")
net = render("runner.network.deniedCIDRs={203.0.113.0/24}", "runner.network.allowedCIDRs={10.20.0.0/24}",
             "runner.network.apiServerCIDRs={192.0.2.10/32}")
net_args = next(d for d in net if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
ok("--denied-networks=203.0.113.0/24" in net_args and "--allowed-networks=10.20.0.0/24" in net_args
   and "--api-server-cidrs=192.0.2.10/32" in net_args, f"the network settings reach the operator: {net_args}")
ok("Role/ferry-operator-api-server-endpoints" not in kinds(net),
   "with the API server's addresses given, the operator reads no EndpointSlice")
ok("Role/ferry-operator-api-server-endpoints" in kinds(default)
   and next(d for d in default if d["kind"] == "Role" and d["metadata"]["name"] == "ferry-operator-api-server-endpoints")
   ["metadata"]["namespace"] == "default", "by default the operator finds the API server in its EndpointSlices")
sts = render("runner.stsEndpoint=https://sts.eu-west-1.amazonaws.com")
ok("--sts-endpoint=https://sts.eu-west-1.amazonaws.com" in next(d for d in sts if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
   "the STS endpoint reaches the operator")
incluster = render("vault.address=https://vault.vault.svc:8200", "vault.inCluster.namespace=vault",
                   "vault.inCluster.podLabels.app\\.kubernetes\\.io/name=vault", "vault.inCluster.podLabels.component=server")
in_args = next(d for d in incluster if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
ok("--vault-namespace=vault" in in_args and "--vault-pod-labels=app.kubernetes.io/name=vault,component=server" in in_args,
   f"an in-cluster Vault's pods reach the operator: {in_args}")
ok(not any(a.startswith("--vault-namespace") for a in default_args), "no in-cluster Vault by default")
# A Vault on plain http: on a loopback address with the loudly named opt-out
# only (the end-to-end tests' OpenBao), never elsewhere.
loopback = render("vault.address=http://127.0.0.1:8200", "runner.allowPlainHttpOnLoopback=true")
ok("--vault-addr=http://127.0.0.1:8200" in operator_args(loopback), "a loopback Vault on plain http with the opt-out")
run("helm", "template", "ferry", str(CHART), "--set", "vault.address=http://127.0.0.1:8200", expect_ok=False)
run("helm", "template", "ferry", str(CHART), "--set", "vault.address=http://vault.vault.svc:8200",
    "--set", "runner.allowPlainHttpOnLoopback=true", expect_ok=False)
ok(not any(a.startswith("--aws-endpoint") for a in default_args), "the regional Secrets Manager and KMS endpoints by default")
awsep = render("runner.awsEndpoint=https://vpce-kms.eu-west-1.example")
ok("--aws-endpoint=https://vpce-kms.eu-west-1.example" in next(d for d in awsep if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
   "the AWS endpoint reaches the operator")

# Retention: the floor reaches the operator; nothing by default; hours only.
kept = render("runs.keepFinishedFor=2160h")
ok("--keep-finished-runs-for=2160h" in next(d for d in kept if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
   "the retention floor reaches the operator")
ok(not any(a.startswith("--keep-finished-runs-for") for a in default_args), "no retention floor by default")
run("helm", "template", "ferry", str(CHART), "--set", "runs.keepFinishedFor=90d", expect_ok=False)

# Lineage: the URL reaches the operator's arguments; plain http is refused.
lineage = render("lineage.url=https://lineage.example.com/api/v1/lineage")
args = next(d for d in lineage if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
ok("--lineage-url=https://lineage.example.com/api/v1/lineage" in args, f"lineage URL passed on: {args}")
ok(not any(a.startswith("--lineage-url") for a in next(d for d in default if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]), "no lineage by default")

# Values that break the schema fail at install.
for bad in ["operator.replicas=0", "operator.logFormat=xml", "operatr.replicas=2", "metrics.port=80", "tenantNamespaces={Bad_NS}", "tenantNamespaces={kube-system}", "runner.tokenAudiences={}", "runner.stsEndpoint=http://sts.example.com", "runner.awsEndpoint=http://kms.example.com", "runner.network.deniedCIDRs={not-a-cidr}", "lineage.url=http://lineage.example.com"]:
    run("helm", "template", "ferry", str(CHART), "--set", bad, expect_ok=False)

# Images by digest: a digest wins over the tag, in the operator's pod and in
# the runner image the admission policy allows; a malformed digest is refused.
D = "sha256:" + "ab" * 32
pinned = render(f"operator.image.digest={D}", f"runner.image.digest={D}")
dep = next(d for d in pinned if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
ok(dep["image"] == f"ghcr.io/ferry-dev/ferry-operator@{D}", f"operator by digest: {dep['image']}")
ok(f"--runner-image=ghcr.io/ferry-dev/job-runner@{D}" in dep["args"], "runner by digest")
ok(any(f"job-runner@{D}" in json.dumps(d) for d in pinned if d["kind"] == "ValidatingAdmissionPolicy"),
   "the admission policy allows the pinned runner image")
run("helm", "template", "ferry", str(CHART), "--set", "runner.image.digest=sha256:short", expect_ok=False)

# The chart as a release: its version is the workspace's, and the package
# carries the digests it is given.
cargo_version = re.search(r'^version = "(.*)"', (CHART.parents[1] / "Cargo.toml").read_text(), re.M).group(1)
meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
ok(meta["version"] == cargo_version and meta["appVersion"] == cargo_version,
   f"Chart.yaml {meta['version']}/{meta['appVersion']} is the workspace's {cargo_version}")
with tempfile.TemporaryDirectory() as tmp:
    digests = Path(tmp) / "digests"
    digests.write_text(f"job-runner sha256:{'01' * 32}\nferry-operator sha256:{'02' * 32}\n")
    tgz = run("bash", str(CHART.parent / "package.sh"), "--digests", str(digests), "--out", tmp).strip()
    ok(tgz.endswith(f"ferry-{cargo_version}.tgz"), f"versioned package: {tgz}")
    released = [d for d in yaml.safe_load_all(run("helm", "template", "ferry", tgz, "--namespace", "ferry-system")) if d]
    c = next(d for d in released if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ok(c["image"] == f"ghcr.io/ferry-dev/ferry-operator@sha256:{'02' * 32}", f"released operator image: {c['image']}")
    ok(f"--runner-image=ghcr.io/ferry-dev/job-runner@sha256:{'01' * 32}" in c["args"], "released runner image")
    ok(kinds(released) == kinds(default), "the package renders what the chart renders")

# The alert rules.
run("promtool", "check", "rules", str(CHART / "files" / "alerts.yaml"))

print(f"chart: {checks} checks passed")
