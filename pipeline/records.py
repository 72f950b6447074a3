"""Typed results that still read like the dicts they replaced.

``check_parity``, ``fit_stage`` and ``resolve_strategy`` used to return dicts, and callers (tests,
run.json writers, ``headstart run``) index them: ``parity["max_abs_diff"]``. Their results are now
dataclasses with named, typed fields; ``Record`` makes them read-only mappings of their fields as
well, so ``record["field"]``, ``{**record}`` and the JSON writer (which writes any mapping) keep
working, and ``to_dict`` gives the plain form that run files store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Iterator


class Record(Mapping):
    """Mixin for dataclasses: a read-only mapping of field name → value."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what run.json / metrics.json store)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]
