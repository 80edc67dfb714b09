"""GITS: geometry-inspired time scheduling (entry point ``gits``)."""
