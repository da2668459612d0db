"""Checkpoints and the final save: choose, verify, restore, save, save-final, atomically.

- `choose`: which checkpoint `--resume` continues from, and whether the recipe still describes
  that run (before anything loads);
- `manifest`: what a checkpoint holds (sizes and hashes, the run's training settings);
- `pickles`: no pickle in a checkpoint reaches an unpickler that can run code;
- `save` / `restore`: a checkpoint written by every rank / read back, with fallback to the
  previous intact one;
- `final`: final/, written like a checkpoint and protected from signals;
- `atomic`: the one way tune writes a folder or a file so a kill leaves the old or the new.
"""
