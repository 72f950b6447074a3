"""What a run leaves on disk: run directories (``RunDir``), a ``headstart run`` directory's layout,
the ``--out`` policy and its lock, atomic files, provenance stamps, the chain and export records."""
