"""``headstart diagnose``: label issues, duplicates and leaks, outliers — all from a feature cache."""
