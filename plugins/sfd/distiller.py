"""The ``sfd`` distiller (the :class:`~diffsampler.Distiller` protocol) over :class:`SFDTrainer`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from diffsampler.options import build_options

from .format import PAPER
from .options import SFDOptions
from .student import SFDStudent, load_student

__all__ = ["SFD"]


class SFD:
    """SFD (Zhou et al. NeurIPS 2024): distil a teacher EDM network into an Euler student."""

    Options = SFDOptions
    paper = PAPER

    def __init__(self, **options: Any) -> None:
        self.options: SFDOptions = build_options(SFDOptions, options, owner="distiller sfd")

    def trainer(self, teacher: Any, *, teacher_info: Mapping[str, Any] | None = None) -> Any:
        from .trainer import SFDTrainer

        return SFDTrainer(teacher, self.options, teacher_info=teacher_info)

    def distill(
        self,
        teacher: Any,
        *,
        progress: Callable[[Mapping[str, float]], None] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 0,
        resume: bool = False,
    ) -> SFDStudent:
        """Train a student from ``teacher``; with ``resume`` continue from ``checkpoint``."""
        trainer = self.trainer(teacher)
        if resume and checkpoint is not None and os.path.exists(os.path.join(checkpoint, "state.json")):
            trainer.load_checkpoint(checkpoint)
        trainer.train(progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
        return trainer.result()

    def load(self, path: str | os.PathLike[str]) -> SFDStudent:
        return load_student(path)
