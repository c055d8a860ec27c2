"""The SHA-256 of every bundle file a study uses, recorded in `bundle.sha256.json` of the study
folder before the first rollout (or, for a study begun before this record existed, at its first
resumed invocation) and checked on every later invocation.

What a rollout depends on must not change under a study: the weight files of the models it uses
(once trained), `initial.safetensors`, and the parts of `config.json` that define a rollout
(`DEFINING`, and each used model's entry). A change there is refused. Anything else is recorded as
a change and allowed: a model that finished training later (its methods were pending), or
config.json keys that describe the bundle without changing a rollout (its calibration tables).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sns_engine.config import write_json
from sns_engine.study.config import StudyError

RECORD = "bundle.sha256.json"
DEFINING = ("format", "system", "normalisation", "schedule", "activation", "initial")


def check_bundle_files(bundle: Path, out: Path, models: Sequence[str]) -> dict[str, Any]:
    """Record the checksums of `bundle` (the weight files of `models`, the finished models the
    study uses) in `out`/bundle.sha256.json, or check them against the record there; returns the
    record. Raises StudyError naming every defining file or key that changed."""
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    config = json.loads((bundle / "config.json").read_text())
    files = {name: sha256_file(bundle / name) for name in
             ("config.json", *(f"{m}.safetensors" for m in models), "initial.safetensors")
             if (bundle / name).exists()}
    keys = {k: sha256_json(v) for k, v in config.items() if k != "models"}
    keys.update({f"models.{m}": sha256_json(config["models"][m]) for m in models})
    file = out / RECORD
    if not file.exists():
        rolled = any((out / "rollouts").glob("*.zarr"))
        record = {"bundle": str(bundle), "recorded": now, "before_first_rollout": not rolled,
                  "files": files, "config": keys, "changes": []}
        write_json(file, record)
        return record
    record = json.loads(file.read_text())
    changed = sorted({f for f, h in record["files"].items()
                      if f != "config.json" and files.get(f) != h}
                     | {k for k, h in record["config"].items()
                        if (k in DEFINING or k.startswith("models.")) and keys.get(k) != h})
    if changed:
        raise StudyError(
            f"the bundle {bundle} changed since this study recorded it at {record['recorded']}: "
            f"{', '.join(changed)} differ from {file}. A study's models and rollout settings must "
            "stay as they were: restore the bundle (the recorded SHA-256s are in that file), or "
            "start a new study with another --out")
    added = sorted(set(files) - set(record["files"]) | set(keys) - set(record["config"]))
    other = sorted(k for k in set(record["config"]) & set(keys) if keys[k] != record["config"][k])
    if added or other or files.get("config.json") != record["files"].get("config.json"):
        record["changes"].append({"time": now, "added": added, "changed": other})
        record.update(files={**record["files"], **files}, config={**record["config"], **keys})
        write_json(file, record)
    return record


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """The hex SHA-256 of a JSON value, written canonically (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
