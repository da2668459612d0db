"""The core's own backends, registered through the same plugin mechanism as any other."""
