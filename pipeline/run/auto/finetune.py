"""``--recipe auto``'s fine-tuning, decided on the cache.

The chosen cache is extracted with a tap (``AUTO_TAPS``), so the backbone's top layers and the head
train on cached activations: ``finetune --on-cache --probe lr`` trains each rate of
``rate_probes.PROBE_LRS`` to early stopping and keeps the best (``finetuning.on_cache``). With
``--augment`` open it is ``--augment auto``: before the fit, the view trials (``evidence.view_trials``,
via ``finetuning.choices.choose_augment``) extract each candidate's views of the training split
with the cache's tap, keep the caches of the items that training heads on them did not hurt, and the
fit draws each row per epoch from its original and those views (no further backbone pass; nothing
kept: the originals only, said in one line). Its output is a normal finetune run directory. The fine-tuned model and the head are then compared on
the same validation images, paired (``evidence.paired``): the fine-tune is kept only when it beats
the head by more than the noise; otherwise the head is, and the run says so in one line. No
end-to-end fine-tune runs: on the digits the on-cache fine-tune already beat the end-to-end one
(docs/measurements.md), so the cache gives no measurable reason to spend one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

#: The tap auto extracts with, per backbone: the cut below the backbone's last block(s), where an
#: epoch on the cache is several times cheaper than end to end (docs/measurements.md). MobileNetV2's
#: top:30 cuts at block_13_project (its last three inverted-residual blocks and the 1,280-channel head
#: convolution; 4×4×56 at 128 px), where the digits gained +2.8 points over end to end; Xception's
#: top:6 is its last block (the two separable convolutions of the exit flow).
AUTO_TAPS = {"mobilenet_v2": "top:30", "xception": "top:6"}
#: Any other backbone: at least its last 10 layers, rounded up to a block boundary by ``resolve_tap``.
FALLBACK_TAP = "top:10"


def auto_tap(config: Any) -> str | None:
    """The tap auto extracts with: the user's ``--tap``, else ``AUTO_TAPS`` for the backbone (None for a
    hub backbone, which is no functional model to cut)."""
    extract = config.extract
    if "extract.tap" in config.explicit or extract.tap:
        return extract.tap
    if extract.backbone.startswith("hub:"):
        return None
    return AUTO_TAPS.get(extract.backbone, FALLBACK_TAP)


def on_cache_config(steps: Any, epochs: int, *, tapped: bool = True, plan: Any = None) -> Any:
    """finetune's options under auto: on the cache, each open rate trained to early stopping.

    ``tapped`` False (a hub backbone: no cut, no activations cached): the guide's end-to-end fine-tune
    at the given or default rate, nothing probed. ``plan`` (a ``RecipePlan``): its views per image in
    the augmentation trials, and no trials when it cut them (the originals only)."""
    ft = steps.config.finetune
    trials = plan is None or plan.audit
    return dataclasses.replace(
        ft, on_cache=tapped, probe="lr" if steps.open("finetune.lr") and tapped else "none", probe_steps=0,
        # On the cache the cached views are the augmentation (the view trials' kept items' views, with
        # the tap); the image-level layer never runs. End to end (hub), the guide's: none.
        augment=ft.augment if not steps.open("finetune.augment") else ("auto" if tapped and trials else "none"),
        trial_views=plan.views if plan is not None and not steps.fixed else ft.trial_views,
        unfreeze=ft.unfreeze if not steps.open("finetune.unfreeze") else "all",  # all: every layer above the tap
        epochs=ft.epochs if not steps.open("finetune.epochs") else epochs)


def paired_evidence(head_dir: Path, finetune_dir: Path) -> dict | None:
    """The fine-tuned model against the head on the cache's validation rows, paired.

    The head runs on the cached features, the fine-tuned model's top layers on the cached
    activations (what its parity check tied to the model on images).

    Returns:
        ``Paired.to_dict()`` with "measure": "accuracy", or None for a multi-label task or a cache
        without validation rows (the stage gate's verdict then stands alone).
    """
    from headstart.features.cache import open_cache
    from headstart.pipeline.model.head import predict_classes
    from headstart.pipeline.evidence.paired import compare_paired
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.finetuning.on_cache import top_block_model

    head, tuned = RunDir(head_dir), RunDir(finetune_dir)
    if head.multi_label:
        return None
    cache_path = head.cache["path"]
    with open_cache(cache_path) as cache:
        if "validation" not in cache.splits or cache.tap is None:
            return None
        data = cache.split("validation")
        features = np.asarray(data.features[:], dtype=np.float32)
        activations = np.asarray(data.activations[:], dtype=np.float32)
        labels, tap = np.asarray(data.labels), dict(cache.tap)
    head_logits = np.asarray(head.load_model().predict(features, verbose=0, batch_size=256))
    top = top_block_model(tuned.load_model(), tap)
    tuned_logits = np.asarray(top.predict(activations, verbose=0, batch_size=64))
    classes = lambda logits: predict_classes(logits, head.num_classes)  # noqa: E731 - one logit for two classes
    paired = compare_paired(classes(head_logits) == labels, classes(tuned_logits) == labels)
    return {**paired.to_dict(), "measure": "accuracy"}


def finetune_line(kept: str, evidence: dict | None, lr: Any) -> str:
    """The one line on what fine-tuning on the cache decided, and why."""
    from headstart.pipeline.evidence.paired import Paired

    if evidence is None:
        return ("fine-tuned on the cache: kept (stage gate, validation loss)" if kept == "finetuned" else
                "fine-tuning skipped: the on-cache fine-tune did not improve on the head's validation loss")
    paired = Paired.from_dict(evidence).describe()
    if kept != "finetuned":
        return (f"fine-tuning skipped: the best on-cache fine-tune (lr {lr}) did not improve on the head's "
                f"validation loss; accuracy {paired}")
    if Paired.from_dict(evidence).beats:
        return (f"fine-tuned on the cache (lr {lr}) beats the head by more than the noise: {paired}; it is the "
                f"final model (a normal finetune run, no end-to-end re-run)")
    return (f"no end-to-end fine-tune: the on-cache fine-tune (lr {lr}, kept by the stage gate on validation loss) "
            f"is within the noise of the head on validation accuracy: {paired}")
