"""The record of what a run ran with: WORKDIR/config.json (the config it started with, never rewritten)
and WORKDIR/config_history.jsonl (one line per resume whose config differed: the step it resumed from and
each changed field's old and new value). `load` replays the history onto config.json: the config the
run's latest steps ran with.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections

CONFIG = "config.json"
HISTORY = "config_history.jsonl"


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as config.json holds it (tuples as lists, placeholders as None)."""
    return json.loads(config.to_json_best_effort())


def changes(saved: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, list[Any]]:
    """{field: [saved value, value now]} for every top-level field whose value differs from `saved`."""
    now = as_json(config)
    keys = sorted(set(saved) | set(now))
    return {k: [saved.get(k), now.get(k)] for k in keys if saved.get(k) != now.get(k)}


def differing_fields(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """'field: saved -> now' for every top-level field whose value differs from a saved config."""
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes(saved, config).items()]


def load_json(workdir: str) -> dict[str, Any]:
    """config.json with the history replayed onto it, as JSON values.

    Raises:
      FileNotFoundError: naming the file when the workdir holds no config.
    """
    path = os.path.join(os.path.abspath(workdir), CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: --workdir must be a training run's directory")
    with open(path) as f:
        config = json.load(f)
    for entry in _history(workdir):
        config.update({k: new for k, (_, new) in entry["changed"].items()})
    return config


def load(workdir: str) -> ml_collections.ConfigDict:
    """The config the run's latest steps ran with (see load_json)."""
    return ml_collections.ConfigDict(load_json(workdir))


def record(workdir: str, config: ml_collections.ConfigDict, step: int) -> dict[str, list[Any]]:
    """Writes config.json for a new run, or appends to the history what a resume at `step` changed.

    Returns:
      The changed fields ({} for a new run or an unchanged resume).
    """
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        return {}
    changed = changes(load_json(workdir), config)
    if changed:
        entry = {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": changed}
        with open(os.path.join(workdir, HISTORY), "a") as f:
            f.write(json.dumps(entry) + "\n")
    return changed


def _history(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, HISTORY)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
