"""The repository's tests use tune's own pytest plugin, opted in as any plugin author would."""

pytest_plugins = ["tune.testing"]
