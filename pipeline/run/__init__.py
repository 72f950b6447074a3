"""`headstart run`: the runner, its stages, its TOML config, and the offline demo."""
