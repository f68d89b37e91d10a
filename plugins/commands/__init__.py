"""Built-in commands that are not methods: ``alignkit eval`` / ``generate`` and ``alignkit plot``."""
