"""Developer sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``.

torch is pinned to the CPU build on this project's machines (``TORCH``): a bare ``torch``
requirement in a fresh environment would pull a multi-GB CUDA build.
"""

from __future__ import annotations

import os

import nox

TORCH = os.environ.get("DIFFSAMPLER_TORCH", "torch==2.13.0")
nox.options.sessions = ["tests", "lint", "typecheck"]


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (slow tests included)."""
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "core", "cli", "plugins", "tests", "benchmarks", "docs/examples")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session)
    session.install("mypy>=1.10")
    session.run("mypy", "core", "plugins", "cli")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (never timed asserts): print their tables."""
    _install(session)
    for script in sorted(os.listdir("benchmarks")):
        if script.endswith(".py"):
            session.run("python", f"benchmarks/{script}")
