"""Class labels of a distiller's teacher trajectories (GITS' warm-up, AMED's training): the seed
gives each a random class when the network has ``label_dim`` (``gits-main/gits_utils.py``,
``amed-solver-main/training/training_loop.py``).

A label comes from :func:`diffsampler.runs.labels_for`, so it depends on its seed only, as in
``diffsampler sample --labels``: the same seeds get the same labels whatever the batching or the
number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import OptionError
from .protocols import ClassConditional
from .runs import labels_for

__all__ = ["labels_cond", "resolve_labels"]


def resolve_labels(choice: str, model: Any) -> str | None:
    """The ``--labels`` choice (``None``: no labels) that ``choice`` stands for with ``model``.

    ``auto`` is ``random`` for a class-conditional model (``label_dim > 0``: classes, or several
    prompts) without a fixed class of its own (the model option ``class_label``), as the seed,
    and no labels otherwise; ``none`` is no labels.
    """
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    classes = int(model.label_dim) if isinstance(model, ClassConditional) else 0
    fixed = getattr(model, "class_label", None) is not None
    return "random" if classes > 0 and not fixed else None


def labels_cond(
    choice: str, model: Any, *, model_name: str, device: Any, first_seed: int, cond: Any = None,
) -> tuple[Any, str]:
    """``(cond, recorded)``: the conditioning to pass (``None``, or a callable of a batch's seeds
    returning their labels as a tensor on ``device``) and the choice to record in the artefact.

    A caller's own ``cond`` wins over ``auto`` (recorded as ``cond``); with another choice it is
    refused. The model refuses a choice it cannot take (``check_labels``) here, before any work.
    """
    if cond is not None:
        if choice != "auto":
            raise OptionError(f"give the option labels={choice} or a cond, not both")
        return cond, "cond"
    resolved = resolve_labels(choice, model)
    labels_for(resolved, model, [first_seed], model_name=model_name)  # refuses in one line
    if resolved is None:
        return None, "none"

    def per_seed(seeds: Sequence[int]) -> Any:
        import torch

        labels = labels_for(resolved, model, seeds, model_name=model_name)
        return torch.tensor(labels, device=device)

    fn: Callable[[Sequence[int]], Any] = per_seed
    return fn, resolved
