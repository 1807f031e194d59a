"""The built-in crnn plugins, one component per module, registered through the same hooks as third-party plugins."""
