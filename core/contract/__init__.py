"""The types of the plugin contract: what backends implement and what their hooks receive.

`tune.plugin` re-exports them; plugins import them from there. Imports no torch.
"""
