"""The one table of option facts (``facts``), their ranges (``bounds``) and ``headstart run``'s flags
(``run_flags``). TF-free and click-free: ``headstart --help`` and every check before TensorFlow
starts read it."""
