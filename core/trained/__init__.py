"""After training: merge, chat, eval, export, push and the model card, on a finished run."""
