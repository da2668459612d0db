"""Files in, tokenized examples out: readers, chat templates, masking and batching."""

from tune.data.examples import Examples

__all__ = ["Examples"]
