"""Model files and generation: safetensors range reads, GGUF input, greedy generation."""
