"""The built-in init strategies: zero, free and learned initial states."""
