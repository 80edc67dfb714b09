"""AMED-Solver and AMED-Plugin: learned intermediate steps (entry point ``amed``)."""
