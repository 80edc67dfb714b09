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
from .options import option
from .protocols import ClassConditional
from .runs import labels_for

__all__ = ["LABEL_CHOICES", "label_text", "labels_cond", "labels_option", "recorded_sampling_labels",
           "resolve_labels"]

#: ``labels`` words besides a class index: ``auto`` is the seed's behaviour (``random`` for a
#: class-conditional model that has no fixed class of its own, ``none`` otherwise).
LABEL_CHOICES = ("auto", "none", "random", "seed")


def label_text(value: object) -> str:
    """A ``labels`` option as text: ``None`` is ``none``, a class index its digits."""
    return "none" if value is None else str(value)


def _check_labels(_instance: object, attribute: Any, value: str) -> None:
    if value in LABEL_CHOICES or value.isdigit():
        return
    raise OptionError(f"option {attribute.name} must be auto, none, random, seed or a class index, got {value!r}")


def labels_option(trajectories: str) -> Any:
    """The ``labels`` option of a distiller whose teacher runs ``trajectories`` (default ``auto``)."""
    return option(
        "auto", help=f"class labels of the {trajectories}: auto (the seed: random for a "
        "class-conditional model without a fixed class, else none), none, random (per seed), "
        "seed (seed mod classes) or a class index",
        converter=label_text, validator=_check_labels,
    )


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
    refused. Without labels, a model's fixed ``class_label`` is what the trajectories see, and is
    recorded. The model refuses a choice it cannot take (``check_labels``) here, before any work.
    """
    if cond is not None:
        if choice != "auto":
            raise OptionError(f"give the option labels={choice} or a cond, not both")
        return cond, "cond"
    resolved = resolve_labels(choice, model)
    labels_for(resolved, model, [first_seed], model_name=model_name)  # refuses in one line
    if resolved is None:  # the model's own default: its fixed class_label, if it has one
        fixed = getattr(model, "class_label", None)
        return None, "none" if fixed is None else str(int(fixed))

    def per_seed(seeds: Sequence[int]) -> Any:
        import torch

        labels = labels_for(resolved, model, seeds, model_name=model_name)
        return torch.tensor(labels, device=device)

    fn: Callable[[Sequence[int]], Any] = per_seed
    return fn, resolved


def recorded_sampling_labels(recorded: Any) -> str | None:
    """The ``sample --labels`` choice that samples as an artefact's teacher trajectories were made
    (its recorded ``labels``: ``random``, ``seed`` or a class index), or None (``none``, ``cond``,
    nothing recorded)."""
    text = None if recorded is None else str(recorded)
    return text if text is not None and (text in ("random", "seed") or text.isdigit()) else None
