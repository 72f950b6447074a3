"""What a ``finetune`` works from, settled before any model is built: the plan.

The head run (a ``RunDir``), the chain it fixes (``ChainConfig``; options that contradict it are refused),
how SOURCE is read (as the head's cache read it), ``--exclude``, the classes and the task (checked
against the head run's), the validation split, and ``--class-weight``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from headstart.features.chain_config import ChainBackbone, ChainConfig, ChainHead
from headstart.pipeline.config import ExtractConfig, FinetuneConfig, HeadConfig, config_to_dict
from headstart.pipeline.data.source_spec import SourceSpec
from headstart.features.errors import Arg
from headstart.features.reporter import Reporter
from headstart.pipeline.errors import OptionError

#: How run.json and progress.json name the identity of the head a finetune started from.
HEAD_IDENTITY = "--head (head.keras sha256)"


@dataclass
class FinetunePlan:
    """What the run works from, settled before any model is built.

    Attributes:
        head_run: the head run (``RunDir``), or None without ``--head``.
        chain: the chain to build (``ChainConfig``): the head run's, with ``--weights`` when given;
            without a head run, the backbone options (or their defaults) and a new head.
        resuming: the interrupted run's progress record when resuming one.
        source_spec: how SOURCE is read (run.json's "source"). source: the resolved Source,
            ``--exclude`` applied. exclusion: the ``--exclude`` Exclusion, or None.
        val_split: "validation" or None.
        log_dir: ``--tensorboard`` on the chief (one writer per log directory), else None.
        multi_label: the source's (and head run's) task: one sigmoid per class.
        class_weights: a ``training.class_weights.ClassWeights`` (``--class-weight``), or None.
    """

    head_run: Any
    chain: ChainConfig
    resuming: dict | None
    source_spec: SourceSpec
    source: Any
    exclusion: Any
    class_names: list[str]
    val_split: str | None
    log_dir: str | None
    multi_label: bool = False
    class_weights: Any = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.chain.image_size


def resolved_config(config: FinetuneConfig) -> dict:
    """run.json's "config": every option, paths made absolute."""
    resolved = config_to_dict(config)
    resolved["source"] = os.path.abspath(config.source) if os.path.exists(config.source) else config.source
    resolved["out"] = os.path.abspath(config.out)
    if config.head:
        resolved["head"] = os.path.abspath(config.head)
    return resolved


def head_identity(head_run: Any) -> str | None:
    """The SHA-256 of the head run's head.keras (None without a head run): a retrained head is another input."""
    from headstart.features.file_hash import sha256_file

    return sha256_file(head_run.model_path) if head_run is not None else None


def make_plan(config: FinetuneConfig, head_run: Any, resuming: dict | None, reporter: Reporter, *,
              is_chief: bool) -> FinetunePlan:
    """Settles the chain, resolves SOURCE (with ``--exclude``) and checks it against the head run.

    Raises:
        OptionError: backbone options that conflict with the head run, classes or a task that
            differ from it, no train split, a monitor the task or splits cannot serve.
        DataError: a source that cannot be read.
    """
    from headstart.pipeline.data.sources import open_source
    from headstart.pipeline.training.class_weights import finetune_class_weights
    from headstart.pipeline.training.monitor import check_monitor

    chain = _chain(config, head_run)  # before SOURCE is read: a conflicting option fails first
    source_spec = source_spec_for(config, head_run)
    source, exclusion = _exclude(config, open_source(source_spec), reporter)
    class_names = list(source.class_names)
    multi_label = bool(getattr(source, "multi_label", False))
    _check_against_head(config, head_run, class_names, multi_label)
    if head_run is None:  # a new head: the source's classes and task
        chain = chain.replace(class_names=tuple(class_names), task="multi_label" if multi_label else "single_label")
    if "train" not in source.split_names:
        raise OptionError(f"{config.source}: no 'train' split to fine-tune on")
    val_split = "validation" if "validation" in source.split_names else None
    check_monitor(config.monitor, has_validation=val_split is not None, multi_label=multi_label)
    cache_path = head_run.cache.get("path") if head_run else None
    return FinetunePlan(head_run=head_run, chain=chain, resuming=resuming, source_spec=source_spec, source=source,
                        exclusion=exclusion, class_names=class_names, val_split=val_split,
                        log_dir=config.tensorboard if is_chief else None, multi_label=multi_label,
                        class_weights=finetune_class_weights(config.class_weight, cache_path, source, class_names,
                                                             reporter, multi_label=multi_label))


def source_spec_for(config: FinetuneConfig, head_run: Any) -> SourceSpec:
    """How finetune reads SOURCE: as the head's cache recorded it (the user does not repeat it), with
    what this call gives (``--split``, the label-file options) winning."""
    given = {"source": config.source, "split_specs": config.split_specs, "label_options": dataclasses.asdict(config)}
    return head_run.source_spec(**given) if head_run else SourceSpec.from_record(None, **given)


def _exclude(config: FinetuneConfig, source: Any, reporter: Reporter) -> tuple[Any, Any]:
    if not config.exclude:
        return source, None
    from headstart.pipeline.data.exclusion import ExcludingSource

    source = ExcludingSource.wrap(source, config.exclude, data=config.source)
    reporter.line(f"--exclude {config.exclude}: removed "
                  + ", ".join(f"{n} {k}" for n, k in source.exclusion.removed.items()) + " images")
    return source, source.exclusion


def _check_against_head(config: FinetuneConfig, head_run: Any, class_names: list[str], multi_label: bool) -> None:
    if head_run is None:
        return
    if head_run.class_names != class_names:
        raise OptionError(f"SOURCE classes {class_names} differ from the head run's {head_run.class_names}")
    if head_run.multi_label != multi_label:
        raise OptionError(f"SOURCE {config.source} is {task_word(multi_label)} but the head run {config.head} is "
                          f"{task_word(not multi_label)}; give the source the head's cache was extracted from")


def task_word(multi_label: bool) -> str:
    return "multi-label" if multi_label else "single-label"


def _chain(config: FinetuneConfig, head_run: Any) -> ChainConfig:
    """The chain to build: the head run's (``--weights`` may name where its file is now), or, without
    one, the backbone options (their extract defaults where not given) and a new head (its classes
    and task are the source's, set once it is read)."""
    if head_run is None:
        defaults = ExtractConfig()

        def given(name: str) -> Any:
            return getattr(config, name) if getattr(config, name) is not None else getattr(defaults, name)

        return ChainConfig(backbone=ChainBackbone(given("backbone"), given("weights"), given("alpha")),
                           image_size=given("image_size"), pooling=given("pooling"), class_names=(),
                           head=ChainHead(dropout=HeadConfig().dropout))
    chain = head_run.chain
    recorded = {"backbone": chain.backbone.name, "alpha": chain.backbone.alpha, "image_size": chain.image_size,
                "pooling": chain.pooling}
    for name, value in recorded.items():
        if getattr(config, name) is not None and getattr(config, name) != value:
            raise OptionError(Arg(name, getattr(config, name)), " conflicts with the head run's "
                              f"{value} ({head_run.cache.get('path')}); leave it out: finetune takes it "
                              "from the head run")
    # e.g. the file moved; the fingerprint check decides
    return chain if config.weights is None else chain.replace(weights=config.weights)
