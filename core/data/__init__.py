"""Rows in, tokenized examples out: sources, formats, templates, masking, caching, batching."""

from tune.data.examples import Examples

__all__ = ["Examples"]
