"""``--recipe auto``: the logistic probe as a candidate head.

The baselines step fits an L2 logistic probe on the chosen cache (``evidence.baselines``). It is a
linear head in all but name, so it competes with the sweep's head: both are scored on the same
validation images, paired (``evidence.paired``), and the probe becomes the head only when it beats
the sweep's by more than the noise (a tie keeps the sweep's head, which the sweep already chose on
validation). The probe then becomes a normal head run directory, RUN/logistic-head/, whose
Dense layer holds the probe's weights (``head_training.write_fixed_head``): finetune, predict and
export take it like any head.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from headstart.features.reporter import Indented


def head_candidate_step(steps: Any, size: int, cache: dict, head: dict, baselines: dict) -> dict:
    """The head the fine-tune starts from: the sweep's, or the logistic probe's when it beats it.

    Returns:
        The head record to use: ``head`` with "candidates" (the paired comparison), or the logistic
        head's record (its "path", "head_sha256", "validation", "fitted_by": "logistic").
    """
    from headstart.pipeline.run.auto.head import head_searchable
    from headstart.pipeline.run.keys import stage_key

    logistic = next((b for b in baselines.get("baselines", []) if b["name"] == "logistic"), None)
    # The head's options the user fixed are kept as given, as every other choice they made.
    if logistic is None or cache.get("multi_label") or not head_searchable(steps.config) \
            or not steps.open("head.head_kind"):
        return head
    key = stage_key({"cache": cache["fingerprint"], "head": head["head_sha256"], "C": logistic["params"]["C"],
                     "seed": steps.config.head.seed})
    record = steps.state.get("head_candidates")
    if not (record and record.get("key") == key and record.get("done")):
        start = time.perf_counter()
        record = _compare(steps, size, cache, head, logistic)
        record.update(key=key, done=True, status="ran", seconds=time.perf_counter() - start)
        steps.save("head_candidates", record)
    steps.console.line(f"  {record['line']}")
    if not record["paired"]["beats"]:
        shutil.rmtree(steps.layout.logistic_head, ignore_errors=True)  # an earlier run's winner, now beaten
        return {**head, "candidates": record}
    return {**record["head"], "candidates": record, "sweep": head.get("sweep")}


def _compare(steps: Any, size: int, cache: dict, head: dict, logistic: dict) -> dict:
    """The probe against the sweep's head on validation; writes the probe's head run when it wins."""
    from headstart.features.cache import open_cache
    from headstart.pipeline.model.head import predict_classes
    from headstart.pipeline.evidence.baselines import logistic_head_weights
    from headstart.pipeline.evidence.paired import compare_paired
    from headstart.pipeline.store.rundir import RunDir

    weights = logistic_head_weights(cache["path"], logistic["params"]["C"], seed=steps.config.head.seed)
    with open_cache(cache["path"]) as opened:
        data = opened.split("validation")
        x = np.asarray(data.features[:], dtype=np.float32)
        labels, num_classes = np.asarray(data.labels), len(opened.class_names)
    if weights[0].shape[1] != (1 if num_classes == 2 else num_classes):
        return {"paired": {"beats": False}, "line": "logistic probe: not every class in its training rows; not a candidate"}
    pooled = x.reshape(len(x), -1, x.shape[-1]).mean(axis=1) if x.ndim > 2 else x
    probe = predict_classes(pooled @ weights[0] + weights[1], num_classes)
    swept = predict_classes(RunDir(head["path"]).load_model().predict(x, verbose=0, batch_size=256), num_classes)
    paired = compare_paired(swept == labels, probe == labels)
    described = paired.describe()
    record = {"paired": paired.to_dict(), "logistic": logistic["label"]}
    if not paired.beats:
        record["line"] = f"head: the sweep's kept; the {logistic['label']} is within the noise or worse: {described}"
        return record
    out = steps.layout.logistic_head
    record["head"] = _write_head(steps, cache, out, weights)
    record["line"] = f"head: the {logistic['label']} beats the sweep's by more than the noise: {described} → {out}"
    return record


def _write_head(steps: Any, cache: dict, out: Path, weights: list) -> dict:
    """The probe as a head run directory (a linear head, no dropout, no normalisation); its record."""
    from headstart.features.file_hash import sha256_file
    from headstart.pipeline.commands.head_training import write_fixed_head

    config = dataclasses.replace(steps.config.head, features=str(cache["path"]), out=str(out), head_kind="linear",
                                 dropout=0.0, normalize="none", overwrite=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = write_fixed_head(config, weights, fitted_by="logistic", reporter=Indented(steps.console))
    validation = {k: v for k, v in (result.metrics.get("validation") or {}).items() if not isinstance(v, (dict, list))}
    return {"path": str(out), "head_sha256": sha256_file(out / "head.keras"), "validation": validation,
            "fitted_by": "logistic", "seconds": 0.0}
