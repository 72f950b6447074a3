"""Refuse a SavedModel whose graph could do more than headstart's exports do, before loading it.

``tf.saved_model.load`` runs functions from the file (initialisers at load, every signature when
called), and a SavedModel's graph may hold any TensorFlow op: ``WriteFile``, ``ReadFile``,
``PyFunc``, datasets that read files. Keras refuses ``TFSMLayer`` in safe mode for this reason.
``predict`` is the one headstart command that loads a SavedModel, so it asks ``check_saved_model``
first, on the protobuf alone (nothing from the file runs):

- one TF2 meta graph (an object graph; a TF1 graph's init and main ops are refused),
- signatures: those headstart's export writes (``EXPORTED_SIGNATURES``), ``serving_default`` among them,
- every op registered in this TensorFlow (no custom op libraries), none touching files, the
  process or the outside (``_is_refused``), and no stateful op beyond reading variables, asserting
  and calling functions — except the checkpoint ops inside the save / restore functions the saver
  record names, which the TF2 loader never calls (it restores variables itself).

A file that fails is one line naming it and the reason; the user can still load it themselves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, TYPE_CHECKING

from headstart.pipeline.errors import RunDirError

if TYPE_CHECKING:
    from tensorflow.core.framework.node_def_pb2 import NodeDef
    from tensorflow.core.protobuf.meta_graph_pb2 import MetaGraphDef

#: What ``commands/export._write_saved_model`` writes (plus TensorFlow's own init-op entry).
EXPORTED_SIGNATURES = frozenset({"serving_default", "serve", "serve_bytes", "class_names", "max_image_pixels",
                                 "thresholds", "__saved_model_init_op"})
#: Stateful ops a headstart export's serving functions hold: variables read, asserts, calls, loops.
SERVING_STATEFUL = frozenset({"Assert", "ReadVariableOp", "VarHandleOp", "VarIsInitializedOp",
                              "AssignVariableOp", "DisableCopyOnRead", "StatefulPartitionedCall", "While",
                              "If", "Case"})
#: Checkpoint I/O, allowed only in the saver's own save / restore functions.
SAVER_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename"})
#: Op names that read or write files, run Python, print, sleep or stream data, stateful or not
#: (``ReadFile``, ``MatchingFiles``, ``PyFuncStateless`` and the datasets are not marked stateful).
_REFUSED_NAMES = re.compile(r"File|Dataset|Reader|Iterator|Py|Print|Summary|Debug|Sleep|Save|Restore|Load|"
                            r"Immutable|Table|Snapshot|Register|Matching|Queue|Barrier|Collective|Send|Recv|"
                            r"Rpc|Environment")


def check_saved_model(path: str | Path) -> None:
    """Refuses ``path`` (a SavedModel directory) unless its graph is one headstart's export could write.

    Args:
        path: the directory holding saved_model.pb.

    Raises:
        RunDirError: one line naming the directory and the first reason found.
    """
    meta = _meta_graph(Path(path))
    unknown = sorted(set(meta.signature_def) - EXPORTED_SIGNATURES)
    if unknown or "serving_default" not in meta.signature_def:
        found = ", ".join(sorted(s for s in meta.signature_def if not s.startswith("__"))) or "none"
        _refuse(path, f"its signatures ({found}) are not the ones headstart's export writes")
    saver = _saver_functions(meta)
    bad = _refused_ops((node.op for node in meta.graph_def.node), SERVING_STATEFUL)
    for function in meta.graph_def.library.function:
        allowed = SERVING_STATEFUL | SAVER_OPS if function.signature.name in saver else SERVING_STATEFUL
        bad += _refused_ops((node.op for node in function.node_def), allowed)
        called = {_called(node) for node in function.node_def} & saver
        if called and function.signature.name not in saver:
            bad.append(f"a call of the checkpoint function {sorted(called)[0]}")
    if bad:
        _refuse(path, f"its graph holds {bad[0]}" + (f" (and {len(set(bad)) - 1} more)" if len(set(bad)) > 1 else ""))


def _meta_graph(path: Path) -> MetaGraphDef:
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    try:
        model.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and OSError alike
        _refuse(path, f"saved_model.pb is not readable ({type(exc).__name__})")
    if len(model.meta_graphs) != 1 or not model.meta_graphs[0].HasField("object_graph_def"):
        _refuse(path, "it is not a TensorFlow 2 SavedModel with one graph, as headstart's export writes")
    return model.meta_graphs[0]


def _saver_functions(meta: MetaGraphDef) -> set[str]:
    """The functions the saver record's save and restore nodes call (the TF2 loader runs neither)."""
    names = {meta.saver_def.save_tensor_name.split(":")[0], meta.saver_def.restore_op_name}
    return {_called(node) for node in meta.graph_def.node if node.name in names} - {""}


def _called(node: NodeDef) -> str:
    return node.attr["f"].func.name if node.op in ("PartitionedCall", "StatefulPartitionedCall") else ""


def _refused_ops(ops: Iterable[str], stateful_allowed: frozenset[str]) -> list[str]:
    from tensorflow.python.framework import op_def_registry

    bad = []
    for op in ops:
        definition = op_def_registry.get(op)
        if definition is None:
            bad.append(f"the op {op}, unknown to this TensorFlow")
        elif op in SAVER_OPS and op in stateful_allowed:
            continue
        elif _REFUSED_NAMES.search(op) or (definition.is_stateful and op not in stateful_allowed):
            bad.append(f"the op {op}")
    return bad


def _refuse(path: str | Path, why: str) -> None:
    raise RunDirError(f"{path}: refused to load this SavedModel: {why}; headstart runs only the graphs its "
                      "own export writes (load it yourself with tf.saved_model.load if you trust it)")
