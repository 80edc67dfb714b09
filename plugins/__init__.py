"""Built-in plugins. Each sub-package is one family and one entry point in pyproject.toml."""
