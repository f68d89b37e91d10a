"""Built-in alignment methods, each a plugin package registered through the same hooks as third-party ones."""
