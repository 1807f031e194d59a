"""The base layer: errors, environment flags and the crnn logger, memory checks, signal handling. Imports nothing else of crnn."""
