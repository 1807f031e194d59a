"""Built-in commands: crnn bench and crnn kernels."""
