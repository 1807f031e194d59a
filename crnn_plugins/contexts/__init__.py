"""The built-in context networks: identity, linear and MLP."""
