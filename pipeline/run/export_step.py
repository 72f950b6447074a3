"""``headstart run --export``: the run's final model exported into ``RUN_DIR/export/``.

The step is ``headstart export RUN_DIR --out RUN_DIR/export`` (``commands.exporting``, the same call,
checks included: the final model, fine-tuned or the chosen head's), run after the evaluate stage. What is exported shapes no model, so ``--export``
and ``--quantize`` are left out of the finetune stage's key and of the run directory's configuration
check: adding ``--export`` to a finished run exports it without training anything again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from headstart.features.reporter import Indented
from headstart.pipeline.store.run_layout import RunLayout
from headstart.pipeline.run.toml_config import RunConfig

if TYPE_CHECKING:
    from headstart.pipeline.run.console import Console



def export_stage(config: RunConfig, run_dir: Path, record: dict | None, console: Console, *, key: str) -> dict:
    """Exports the run's final model into ``RUN_DIR/export``; an unchanged key finds it already done.

    Returns:
        The stage's record for stages.json: key, status, seconds, the files and their checks.
    """
    from headstart.pipeline.config import ExportConfig
    from headstart.pipeline.commands.exporting import export_model_dir

    ft, start = config.finetune, time.perf_counter()
    try:
        result = export_model_dir(
            ExportConfig(model=str(run_dir), out=str(RunLayout(run_dir).export), formats=tuple(ft.export),
                         quantize=ft.quantize, batch_size=ft.batch_size,
                         overwrite=bool(record) and record.get("key") != key),
            reporter=Indented(console))
    finally:
        console.close()
    return {"key": key, "done": True, "status": "reused" if result.reused else "ran",
            "seconds": time.perf_counter() - start, "out": result.out, "exports": result.exports,
            "checks": result.checks}
