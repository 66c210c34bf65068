"""The NVIDIA Dynamo graph of a plan: a frontend and one worker service per pool.

Shaped as the DynamoGraphDeployment examples of the Dynamo repository (services with a
componentType, prefill / decode subComponentType, replicas = workers, a GPU limit per
worker and the worker's engine flags as container args).
"""
from __future__ import annotations

from typing import Any

__all__ = ["dynamo_graph"]


def dynamo_graph(dyn: dict[str, Any], plan) -> dict[str, Any]:
    """The DynamoGraphDeployment (as a mapping) for `plan` (a dse.launch.plan.LaunchPlan)."""
    g = dyn["graph"]
    image = g["image"]
    services: dict[str, Any] = {
        "Frontend": {"componentType": "frontend", "replicas": 1,
                     "extraPodSpec": {"mainContainer": {"image": image}}}}
    for pool in plan.pools:
        args = [g["model"], plan.model]
        if plan.mode == "disagg":
            args += [g["role_flag"], pool.role]
        args += plan.serve[pool.role]
        svc: dict[str, Any] = {"envFromSecret": "hf-token-secret", "componentType": "worker"}
        if plan.mode == "disagg":
            svc["subComponentType"] = pool.role
        svc.update({"replicas": pool.workers, "resources": {"limits": {"gpu": str(pool.gpus)}},
                    "extraPodSpec": {"mainContainer": {"image": image, "command": list(g["command"]),
                                                       "args": args}}})
        services[g["services"][pool.role]] = svc
    cid = "x" if plan.config_id is None else plan.config_id
    return {"apiVersion": g["api_version"], "kind": g["kind"],
            "metadata": {"name": f"dse-config-{cid}-{plan.mode}"}, "spec": {"services": services}}
