"""The end-to-end suite's one cluster, shared by the scenario files that need
no cluster of their own (the canary and the fault scenarios start theirs)."""

from __future__ import annotations

import os
import pathlib
import tempfile

import pytest
from cluster import Cluster

# The namespaces the platform team opted in; the operator acts on no other.
TENANTS = ["acme", "refused-sensitivity", "refused-residency", "retry", "deadline", "scheduled", "rollback",
           "vaulted", "sharded", "attacks", "impostors"]


@pytest.fixture(scope="session")
def cluster():
    assert os.environ.get("FERRY_S3_ENDPOINT") and os.environ.get("FERRY_AZURITE_ENDPOINT"), \
        "the test services are not running: source ~/.cache/ferry/services/env"
    with tempfile.TemporaryDirectory(prefix="ferry-e2e-") as tmp:
        c = Cluster(pathlib.Path(tmp), tenants=TENANTS)
        try:
            c.start_operator("operator-a")
            yield c
        finally:
            c.stop()
