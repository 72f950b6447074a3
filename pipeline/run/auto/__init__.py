"""``headstart run --recipe auto``: its budget plan, its steps, decisions and summary."""
