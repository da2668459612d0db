"""The plugin system: hook specs, backend kinds and declarations, the manager, the catalog.

Nothing here is public: plugins see the contract through `tune.plugin`. Imports no torch.
"""
