#!/usr/bin/env python3
"""Writes each fuzz target's seed corpus (fuzz/seeds/TARGET/) from the repository's examples
(examples/, e2e/testdata/) and a few hand-picked cases. Run from anywhere: python3 fuzz/seed.py
"""

import hashlib
import json
import pathlib
import struct

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
SOURCES = sorted(
    [p for p in (ROOT / "examples").rglob("*.yaml")]
    + [p for p in (ROOT / "e2e" / "testdata").glob("*.yaml")]
)


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    directory = SEEDS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def documents(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def walk(value):
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def cron(scheduled, zone=None, *numbers):
    text = scheduled + ("\0" + zone if zone is not None else "")
    tail = b"".join(struct.pack("<q", n) for n in numbers)
    return text.encode() + (b"\xff" + tail if numbers else b"")


def main():
    schedules, zones, plugins = set(), set(), []
    for path in SOURCES:
        docs = documents(path)
        write("crd_plans", json.dumps(docs))
        write("crd_plans", json.dumps({"items": docs, "now": 3600}))
        for doc in docs:
            write("crd_plans", json.dumps(doc))
            for node in walk(doc):
                if isinstance(node, dict):
                    if isinstance(node.get("scheduled"), str):
                        schedules.add(node["scheduled"])
                    if isinstance(node.get("timeZone"), str):
                        zones.add(node["timeZone"])
                    for key in ("policies", "executor"):
                        refs = node.get(key)
                        refs = refs if isinstance(refs, list) else [refs]
                        plugins += [r for r in refs if isinstance(r, dict) and "name" in r]

    # Worlds with history: each example Task beside runs of it in every phase, with their pod,
    # and each Project's templated children as the executor would create them, reported on.
    for path in SOURCES:
        docs = documents(path)
        world = list(docs)
        for doc in docs:
            name = doc.get("metadata", {}).get("name", "x")
            if doc.get("kind") == "Task":
                world[world.index(doc)] = {**doc, "metadata": {**doc["metadata"], "namespace": "ns",
                                                               "uid": "uid-" + name, "generation": 1,
                                                               "creationTimestamp": "2026-01-01T00:00:00Z"}}
                for i, phase in enumerate(["Succeeded", "Failed", "Running", "Pending"]):
                    run = f"{name}-{i}"
                    status = {"phase": phase, "attempt": i, "podName": run + "-0"}
                    if phase in ("Succeeded", "Failed"):
                        status.update(completionTime="2026-01-01T00:10:00.000000Z", handedOff=True,
                                      exitCode=0 if phase == "Succeeded" else 1, message="done")
                    world.append({"apiVersion": "workflow.orrery.dev/v1alpha1", "kind": "TaskRun",
                                  "metadata": {"name": run, "namespace": "ns", "uid": "uid-" + run,
                                               "labels": {"workflow.orrery.dev/task": name},
                                               "creationTimestamp": "2026-01-01T00:00:00Z"},
                                  "spec": {"taskRef": {"name": name},
                                           "initiator": {"kind": "Ignitor", "name": "ignitor1", "run": "1"}},
                                  "status": status})
                world.append({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": name + "-2-0", "namespace": "ns"},
                              "status": {"phase": "Failed", "containerStatuses": [
                                  {"name": "main", "ready": False, "restartCount": 0, "image": "busybox",
                                   "imageID": "", "state": {"terminated": {"exitCode": 1}}}]}})
            if doc.get("kind") == "Ignitor":
                world.append({**doc, "status": {"lastIgnition": {"sequence": 3, "time": "2026-01-01T00:00:00.000000Z",
                                                                  "reason": "Schedule"},
                                                 "lastScheduleTime": "2025-12-31T23:00:00Z", "ignitionsCount": 3}})
            templates = (doc.get("spec") or {}).get("templates") if doc.get("kind") == "Project" else None
            for key, kind in (("clusters", "Cluster"), ("virtualClusters", "VirtualCluster"),
                              ("applications", "Application")):
                for child in (templates or {}).get(key, []):
                    ready = {"observedGeneration": 1, "conditions": [
                        {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
                    status = ready if kind != "Application" else {
                        **ready, "versions": [{"name": v["name"], "replicas": 2, "readyReplicas": 2}
                                              for v in child["spec"].get("versions", [])]}
                    place = {"Cluster": {"project": name}, "VirtualCluster": {"cluster": "local"}}.get(kind, {})
                    world.append({"apiVersion": "hierarchy.orrery.dev/v1alpha1", "kind": kind,
                                  "metadata": {"name": child["name"], "namespace": "shop", "generation": 1,
                                               "uid": "uid-" + child["name"]},
                                  "spec": {**child["spec"], **place}, "status": status})
        if world != docs:
            write("crd_plans", json.dumps({"items": world, "now": 900}))

    # Schedules as written in the examples, and the shapes the scheduler documents.
    schedules |= {"NOW", "2020-02-03T19:34:05Z", "5 * * * *", "*/10 * * * * *", "@hourly",
                  "@midnight", "@yearly", "30 9 * * MON", "0 0 30 2 *", "0 0 29 2 *",
                  "30 2 * * *", "0 9 * * 1-5", "0 0 L * *", "0 0 * * 5#3", "59 23 31 12 *"}
    zones |= {"Europe/Amsterdam", "America/New_York", "Australia/Lord_Howe", "Pacific/Kiritimati",
              "Asia/Kathmandu", "UTC"}
    for s in sorted(schedules):
        write("cron_schedule", cron(s))
        for z in sorted(zones):
            write("cron_schedule", cron(s, z))
    # Around daylight-saving changes (offsets from 2026-01-01T00:00:00Z), late and suspended.
    for offset in (7_174_800, 25_916_400, -31_536_000 * 2000, 31_536_000 * 7000):
        write("cron_schedule", cron("30 2 * * *", "Europe/Amsterdam", offset, 86_400, 7_200, 60, 0))
        write("cron_schedule", cron("*/15 * * * *", "Australia/Lord_Howe", offset, 600, 3_600, 0, 2))
    write("cron_schedule", cron("0 0 * * *", None, 0, 0, 0, 0, 5))

    # Parameters as written in the examples, and each built-in policy's own.
    shop = {"application": "shop", "namespace": "team-a", "generation": 1,
            "versions": [{"name": "v1", "revision": "rev-v1", "replicas": 2, "readyReplicas": 2},
                         {"name": "v2", "revision": "rev-v2", "replicas": 2, "readyReplicas": 1}],
            "weights": [{"version": "v1", "weight": 80}, {"version": "v2", "weight": 20}]}
    hand = [
        {"policy": "canary", "parameters": {"stepWeight": 20, "maxWeight": 80, "interval": "10s"}},
        {"policy": "health-gate", "parameters": {"minReadyPercent": 50, "onFailure": "Rollback"}},
        {"policy": "metric-analysis", "parameters": {"address": "http://p:9090", "query": "up",
                                                     "successCondition": "result > 0", "interval": "1m"},
         "answer": {"status": "success", "data": {"resultType": "vector", "result": []}}},
        {"policy": "experiment", "parameters": {"version": "v2", "headers": {"x-beta": "yes"}}},
        {"policy": "freeze", "parameters": {}},
        {"policy": "weight-cap", "parameters": {"maxWeight": 50}},
        {"policy": "cel", "parameters": {"expression": "input"}},
        {"policy": "webhook", "parameters": {"url": "http://hook:8080/x", "timeout": "5s"},
         "answer": {"output": {"weights": [{"version": "v1", "weight": 100}]}}},
        {"policy": "default", "parameters": {"installGatewayAPI": True}},
    ]
    for seed in hand + [{"policy": p["name"], "parameters": p.get("parameters") or {}} for p in plugins]:
        write("policy_parameters", json.dumps(seed))
        write("policy_parameters", json.dumps({**seed, "observed": shop, "now": 600, "promote": True}))


if __name__ == "__main__":
    main()
