"""Rebuilds every registry backbone with ``weights=None`` and checks the registry's recorded facts.

``headstart backbones`` prints the parameter count and feature size recorded in
``features/registry.py`` instead of building ~40 models (minutes and gigabytes); this script is how
those numbers were measured and how to check them after a Keras upgrade or a new entry:

    python benchmarks/backbone_facts.py            # all entries (a few minutes on 2 cores)
    python benchmarks/backbone_facts.py convnext   # entries whose name contains "convnext"

Prints one line per entry (measured params, features, native input size, build seconds, OK or the recorded value)
and exits 1 when any recorded fact differs.
"""

from __future__ import annotations

import gc
import sys
import time


def main(argv: list[str]) -> int:
    import keras

    from headstart.features.backbones import build_base
    from headstart.features.registry import BACKBONES

    wanted = [s for s in BACKBONES.values() if not argv or any(a in s.name for a in argv)]
    bad = 0
    for spec in wanted:
        t = time.perf_counter()
        base = build_base(spec.name, weights="none", image_size=max(spec.min_size, 75))
        params, features = int(base.count_params()), int(base.output_shape[-1])
        del base
        # The application's own default input (with its ImageNet top) is the size it was trained at.
        native = int(getattr(keras.applications, spec.application)(weights=None).input_shape[1])
        ok = (params, features, native) == (spec.params, spec.features, spec.native_size)
        bad += not ok
        print(f"{spec.name:22s} params {params:>11,d}  features {features:5d}  native {native:4d}  "
              f"{time.perf_counter() - t:5.1f} s  "
              + ("OK" if ok else f"registry says {spec.params:,d} / {spec.features} / {spec.native_size}"), flush=True)
        keras.backend.clear_session()
        gc.collect()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
