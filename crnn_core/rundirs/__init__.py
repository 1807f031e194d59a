"""Run directories: their files and lock, the run config and writer, checkpoints, safetensors weights and loading a run."""
