"""`headstart sweep`: search space, the caches of a shoot-out, the batched trainer, the Optuna study, the report."""
