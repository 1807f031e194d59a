"""The plugin manager: entry-point discovery, the pluggy hooks, the component registries and the generated plugin reference."""
