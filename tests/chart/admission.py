"""Evaluates the chart's ValidatingAdmissionPolicies the way the API server does,
with Google's CEL implementation (PyPI cel-expr-python: cel-cpp, which follows
the same CEL specification and conformance suite as cel-go, the implementation
the API server embeds, and ships the strings and optional extensions Kubernetes
enables).

What is modelled of the admission plugin: matchConstraints.resourceRules (by
group, resource and operation), matchConditions, variables (in order, each able
to use the ones before), validations with message and messageExpression, and
failurePolicy Fail (an expression that errors denies). Not modelled: the
runtime cost limit (the expressions here walk a handful of containers,
volumes and rules), namespace or object selectors (the policy uses none), and
the `authorizer` (the API server's authorization, which the erase rule asks):
each of its checks is read as "not allowed". The end-to-end suite runs every
policy on a real API server (tests/e2e/test_attacks.py).

A request is admitted when every policy that matches it admits it, as the API
server does with several bound policies.

Usage: admission.py [--set key=value ...] < requests.json

Each request is {"operation", "namespace", "username", "object", "oldObject"};
the answer, on standard output, is one {"allowed", "messages"} per request. The
policy comes from `helm template` of charts/ferry with the given values.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from cel_expr_python import cel
from cel_expr_python.ext import ext_optional, ext_strings

CHART = Path(__file__).resolve().parents[2] / "charts" / "ferry"
# A check of the API server's authorizer: `authorizer.group(..)....allowed()`.
AUTHORIZER = re.compile(r"authorizer(?:\s*\.\s*\w+\([^()]*\))+")

# kind -> (API group, resource), for the kinds the policies can match.
RESOURCES = {
    "Connector": ("ferry.dev", "connectors"),
    "ConnectorRun": ("ferry.dev", "connectorruns"),
    "Pod": ("", "pods"),
    "ServiceAccount": ("", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    "Secret": ("", "secrets"),
    "ConfigMap": ("", "configmaps"),
}


def render(sets: list[str], namespace: str = "ferry-system") -> list[dict]:
    args = ["helm", "template", "ferry", str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


class Policy:
    def __init__(self, policy: dict) -> None:
        spec = policy["spec"]
        assert spec.get("failurePolicy") == "Fail", "the policy fails closed"
        self.env = cel.NewEnv(
            variables={name: cel.Type.DYN for name in ("object", "oldObject", "request", "variables")},
            extensions=[ext_strings.ExtStrings(), ext_optional.ExtOptional()],
        )
        self.rules = spec["matchConstraints"]["resourceRules"]
        # Every expression compiles, or the API server would refuse the policy.
        self.conditions = [self.env.compile(c["expression"]) for c in spec.get("matchConditions", [])]
        self.variables = [(v["name"], self.env.compile(v["expression"])) for v in spec.get("variables", [])]
        self.validations = []
        for v in spec["validations"]:
            message = self.env.compile(v["messageExpression"]) if "messageExpression" in v else None
            expression = AUTHORIZER.sub("false", v["expression"])
            self.validations.append((self.env.compile(expression), v.get("message", ""), message))

    def matches(self, operation: str, kind: str) -> bool:
        group, resource = RESOURCES[kind]
        return any(group in r["apiGroups"] and resource in r["resources"] and operation in r["operations"]
                   for r in self.rules)

    def admit(self, req: dict) -> dict:
        obj = req.get("object") or req.get("oldObject")
        kind = obj["kind"]
        if not self.matches(req["operation"], kind):
            return {"allowed": True, "messages": [], "matched": False}
        group, resource = RESOURCES[kind]
        version = obj.get("apiVersion", "v1").split("/")[-1]
        request = {
            "operation": req["operation"],
            "namespace": req["namespace"],
            "name": obj["metadata"].get("name", ""),
            "userInfo": {"username": req["username"]},
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
        }
        data = {"object": req.get("object"), "oldObject": req.get("oldObject"), "request": request,
                "variables": {}}

        def run(expr):
            return expr.eval(data=data).plain_value()

        try:
            if not all(run(c) is True for c in self.conditions):
                return {"allowed": True, "messages": [], "matched": False}
        except Exception as e:  # a failing match condition fails closed
            return {"allowed": False, "messages": [f"match condition error: {e}"], "matched": True}
        messages = []
        for name, expr in self.variables:
            try:
                data["variables"] = {**data["variables"], name: run(expr)}
            except Exception as e:
                messages.append(f"variable {name}: {e}")
                return {"allowed": False, "messages": messages, "matched": True}
        for expr, message, message_expr in self.validations:
            try:
                passed = run(expr) is True
            except Exception as e:
                passed, message_expr, message = False, None, f"expression error: {e}"
            if not passed:
                text = message
                if message_expr is not None:
                    try:
                        text = run(message_expr)
                    except Exception:
                        pass
                messages.append(text)
        return {"allowed": not messages, "messages": messages, "matched": True}


def policies_of(docs: list[dict]) -> list[Policy]:
    """Every ValidatingAdmissionPolicy of the chart, each with its binding."""
    policies = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    bindings = {d["spec"]["policyName"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert policies, "the chart has admission policies"
    for p in policies:
        binding = bindings.get(p["metadata"]["name"])
        assert binding is not None, f"policy {p['metadata']['name']} is bound"
        assert binding["spec"]["validationActions"] == ["Deny"], "the binding denies"
    return [Policy(p) for p in policies]


def admit_all(policies: list[Policy], req: dict) -> dict:
    verdicts = [p.admit(req) for p in policies]
    messages = [m for v in verdicts for m in v["messages"]]
    return {"allowed": all(v["allowed"] for v in verdicts), "messages": messages,
            "matched": any(v["matched"] for v in verdicts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], dest="sets")
    args = parser.parse_args()
    policies = policies_of(render(args.sets))
    requests = json.load(sys.stdin)
    json.dump([admit_all(policies, r) for r in requests], sys.stdout)


if __name__ == "__main__":
    main()
