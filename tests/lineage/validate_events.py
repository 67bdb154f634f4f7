"""Validates OpenLineage run events written by Ferry with the OpenLineage Python
client's own models: every event is rebuilt as a RunEvent (running the models'
validators: UUID run id, ISO 8601 time with a time part, known event type, URIs)
and serialised back; the result must equal the event Ferry wrote, so no field is
unknown, missing or misspelt and every facet's schema URL is the one the client
knows.

Usage: validate_events.py EVENTS.ndjson EXPECTED_TYPES (e.g. START,COMPLETE)
Prints one line per event; exits 1 on the first invalid one.
"""

import json
import sys

from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent
from openlineage.client.generated.base import EventType
from openlineage.client.generated.error_message_run import ErrorMessageRunFacet
from openlineage.client.generated.schema_dataset import (
    SchemaDatasetFacet,
    SchemaDatasetFacetFields,
)
from openlineage.client.generated.tags_dataset import TagsDatasetFacet, TagsDatasetFacetFields
from openlineage.client.serde import Serde

KNOWN_DATASET_FACETS = {"tags", "schema"}
KNOWN_RUN_FACETS = {"errorMessage"}


def facet_common(raw):
    return {"producer": raw["_producer"]}


def dataset_facets(raw):
    unknown = set(raw) - KNOWN_DATASET_FACETS
    if unknown:
        raise ValueError(f"unknown dataset facets {sorted(unknown)}")
    out = {}
    if "tags" in raw:
        t = raw["tags"]
        out["tags"] = TagsDatasetFacet(
            tags=[TagsDatasetFacetFields(**tag) for tag in t["tags"]],
            producer=t["_producer"],
        )
    if "schema" in raw:
        s = raw["schema"]
        out["schema"] = SchemaDatasetFacet(
            fields=[SchemaDatasetFacetFields(**f) for f in s["fields"]],
            producer=s["_producer"],
        )
    return out


def run_facets(raw):
    unknown = set(raw) - KNOWN_RUN_FACETS
    if unknown:
        raise ValueError(f"unknown run facets {sorted(unknown)}")
    out = {}
    if "errorMessage" in raw:
        e = raw["errorMessage"]
        out["errorMessage"] = ErrorMessageRunFacet(
            message=e["message"],
            programmingLanguage=e["programmingLanguage"],
            producer=e["_producer"],
        )
    return out


def rebuild(raw):
    return RunEvent(
        eventType=EventType(raw["eventType"]),
        eventTime=raw["eventTime"],
        producer=raw["producer"],
        run=Run(runId=raw["run"]["runId"], facets=run_facets(raw["run"].get("facets", {}))),
        job=Job(namespace=raw["job"]["namespace"], name=raw["job"]["name"]),
        inputs=[
            InputDataset(namespace=d["namespace"], name=d["name"], facets=dataset_facets(d.get("facets", {})))
            for d in raw.get("inputs", [])
        ],
        outputs=[
            OutputDataset(namespace=d["namespace"], name=d["name"], facets=dataset_facets(d.get("facets", {})))
            for d in raw.get("outputs", [])
        ],
    )


def without_empty(v):
    """Drops empty objects and lists, which the client serialises and Ferry omits."""
    if isinstance(v, dict):
        return {k: without_empty(x) for k, x in v.items() if x not in ({}, [], None)}
    if isinstance(v, list):
        return [without_empty(x) for x in v]
    return v


def main():
    path, expected = sys.argv[1], sys.argv[2].split(",")
    with open(path, encoding="utf-8") as f:
        events = [json.loads(line) for line in f if line.strip()]
    types = [e["eventType"] for e in events]
    if types != expected:
        print(f"event types {types}, expected {expected}")
        return 1
    run_ids = {e["run"]["runId"] for e in events}
    if len(run_ids) != 1:
        print(f"one run expected, got run ids {sorted(run_ids)}")
        return 1
    for raw in events:
        try:
            event = rebuild(raw)
        except Exception as e:  # noqa: BLE001 - any model error is a failure
            print(f"invalid {raw.get('eventType')} event: {type(e).__name__}: {e}")
            return 1
        back = without_empty(Serde.to_dict(event))
        if back != without_empty(raw):
            print(f"{raw['eventType']}: the client's model differs from what Ferry wrote")
            print(" ferry :", json.dumps(without_empty(raw), sort_keys=True))
            print(" client:", json.dumps(back, sort_keys=True))
            return 1
        print(f"ok {raw['eventType']} run {raw['run']['runId']} "
              f"{len(raw['inputs'])} input(s) {len(raw['outputs'])} output(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
