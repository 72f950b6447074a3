"""The recipe's experiments on a head and a cache: the invariance audit, baselines, the budget plan."""
