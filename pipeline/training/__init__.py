"""The fit machinery shared by train-head, finetune, the distributed loop, diagnose and the sweep.

Early stopping (one rule), what it watches (``--monitor``), the stop on a non-finite loss, the
SIGKILL-safe ``fit`` of a fine-tuning stage, the one head trainer over cached features (many heads in
one compiled step; train-head is a group of one), the stage
gate, class weights, ``--deterministic``, the labelled image batches ``fit`` trains on, and the one
prediction loop over a split. The commands that use them live in ``headstart.pipeline.commands``.
"""
