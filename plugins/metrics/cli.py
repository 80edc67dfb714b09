"""The ``metrics`` plugin's commands (added through ``register_commands``).

``diffsampler fid ref``   reference statistics (``mu``, ``sigma``, ``count``) of an image set;
``diffsampler fid calc``  FID of an image set against reference statistics;
``diffsampler prdc``      precision, recall, density, coverage of two image sets;
``diffsampler clip-score`` CLIP score of images against prompts.

Image sets are folders of PNGs, ``.zip`` archives or ``.npz`` files (``arr_0``); torch is
imported when a command runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

__all__ = ["add_commands"]

Weights = Annotated[str | None, typer.Option(help="Inception weights .pth (else $DIFFSAMPLER_FID_WEIGHTS, cache, download)")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")]
Batch = Annotated[int, typer.Option(min=1, help="images per forward pass")]
Resize = Annotated[str, typer.Option(help="input resize to 299: tf (TensorFlow's, as EDM, the seed and "
                                          "published FIDs) or pytorch-fid")]


def _check_resize(resize: str) -> str:
    from diffsampler.errors import OptionError

    from .inception import RESIZES

    if resize not in RESIZES:
        raise OptionError(f"--resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    return resize


def _console() -> Any:
    from diffsampler.cli._common import console

    return console


def _err() -> Any:
    from diffsampler.cli._common import err_console

    return err_console


def _warn(message: str) -> None:
    from rich.markup import escape

    from diffsampler.cli._common import err_console

    err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _embedded(path: Path, *, weights: str | None, device: str, batch: int, what: str,
              keep: np.ndarray | None = None, resize: str = "tf", skip: int = 0) -> Iterator[np.ndarray]:
    """Inception features of the image set at ``path`` (of the images ``keep`` picks, sorted
    indices; or all after the first ``skip``), batch by batch, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from diffsampler.imagesets import iter_images

    from .fid import _device, image_features, load_inception
    from .prdc import set_size, take_rows

    count = set_size(path)
    if skip:
        keep = np.arange(skip, count)
    total = count if keep is None else len(keep)
    device = _device(device)  # a missing GPU is refused before the weights are fetched
    net = load_inception(weights, device=device, resize=resize)
    chosen = "" if keep is None else f" (a random {total} of {count})"
    if skip:
        chosen = f" (the last {total} of {count}: {skip} were measured before the interruption)"
    _err().print(f"{what}: {total} image{'' if total == 1 else 's'}{chosen} from {path}", highlight=False,
                 soft_wrap=True)
    progress = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=_err(), transient=True, disable=not _err().is_terminal)
    with progress:
        task = progress.add_task(what, total=total)
        yield from image_features(net, take_rows(iter_images(path, batch), keep), batch=batch,
                                  on_batch=lambda n: progress.advance(task, n))


def fid_ref(
    data: Annotated[Path, typer.Option(help="image set: folder of PNGs, .zip or .npz (arr_0)")],
    out: Annotated[Path, typer.Option(help="statistics file to write (.npz: mu, sigma, count)")],
    features: Annotated[bool, typer.Option(help="also store the features (for prdc --real)")] = False,
    weights: Weights = None,
    device: Device = "auto",
    batch: Batch = 250,
    resize: Resize = "tf",
) -> None:
    """Reference statistics of an image set (EDM's .npz format, plus the image count and the resize)."""
    import attrs
    from rich.markup import escape

    from diffsampler.cli._common import exit_status, sigterm_interrupts
    from diffsampler.outputs import check_output_file

    from .fid import STANDARD_COUNT, save_stats
    from .partial import ReferenceState, partial_path
    from .prdc import set_size
    from .weights import resolve_fid_weights

    _check_resize(resize)
    check_output_file(out)
    saved = partial_path(out)
    settings = ReferenceState.settings_of(data, set_size(data), resize, resolve_fid_weights(weights), features)
    state, why = ReferenceState.resume(saved, settings)
    if why:
        _warn(why)
    done = state.count
    try:
        with sigterm_interrupts():
            for chunk in _embedded(data, weights=weights, device=device, batch=batch, what="reference",
                                   resize=resize, skip=done):
                if features:
                    state.features.append(chunk.astype(np.float32))
                state.moments.add(chunk)
    except KeyboardInterrupt as stop:
        if state.features:  # appended before the moments: at most one chunk more than they hold
            state.features[:] = [np.concatenate(state.features)[: state.count]]
        if state.count > done:
            state.save(saved)
            _err().print(escape(f"interrupted after {state.count} of {settings['images']} images: saved in "
                                f"{saved}; the same command continues from there"), highlight=False,
                         soft_wrap=True)
        else:
            _err().print("interrupted: no new image measured, nothing written", highlight=False)
        raise typer.Exit(exit_status(stop)) from None
    stats = attrs.evolve(state.moments.stats(), resize=resize)
    if not features:
        save_stats(out, stats)
    else:
        with open(out, "wb") as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count or 0),
                     features=np.concatenate(state.features), resize=np.array(resize))
    saved.unlink(missing_ok=True)
    if (stats.count or 0) < STANDARD_COUNT:
        _warn(f"reference of {stats.count} images; published FIDs use {STANDARD_COUNT}-image references")
    _console().print(f"wrote {out} ({stats.count} images, resize {resize})", highlight=False, soft_wrap=True)


def fid_calc(
    images: Annotated[Path, typer.Option(help="image set: folder of PNGs, .zip or .npz (arr_0)")],
    ref: Annotated[Path, typer.Option(help="reference statistics .npz (mu, sigma)")],
    weights: Weights = None,
    device: Device = "auto",
    batch: Batch = 250,
    resize: Resize = "tf",
    num: Annotated[int | None, typer.Option(min=2, help="use a random NUM of the images (EDM's choice, --seed)")] = None,
    seed: Annotated[int, typer.Option(help="random seed of the --num images")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """FID of an image set against reference statistics; prints the sample counts."""
    from diffsampler.errors import OptionError

    from .fid import FeatureMoments, check_resize, count_warnings, frechet_distance, load_stats
    from .prdc import set_size, subset

    reference = load_stats(ref)
    check_resize(reference.resize, _check_resize(resize), f"--ref {str(ref)!r}")
    keep = None
    if seed and num is None:
        raise OptionError("--seed picks the --num images: give --num as well")
    if num is not None:
        found = set_size(images)
        if found < num:  # as EDM's fid.py
            raise OptionError(f"found {found} images in {str(images)!r}, but --num expects at least {num}")
        keep = subset(found, num, seed)
    moments = FeatureMoments()
    for chunk in _embedded(images, weights=weights, device=device, batch=batch, what="samples", resize=resize,
                           keep=keep):
        moments.add(chunk)
    stats = moments.stats()
    for message in count_warnings(stats.count or 0, reference.count):
        _warn(message)
    value = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
    if json_out:
        from diffsampler.cli._common import print_json

        print_json({"fid": value, "count": stats.count, "ref_count": reference.count, "resize": resize,
                    "ref_resize": reference.resize, "num": num, "seed": seed if num is not None else None})
        return
    ref_n = "unknown" if reference.count is None else str(reference.count)
    made = f"resize {resize}" + ("" if reference.resize else "; the reference records none")
    _console().print(f"FID {value:.4f}  ({stats.count} samples, reference of {ref_n} images, {made})", highlight=False,
                     soft_wrap=True)


def prdc_cmd(
    real: Annotated[Path, typer.Option(help="real images (folder, .zip, .npz) or features .npz from 'fid ref --features'")],
    fake: Annotated[Path, typer.Option(help="generated images (folder, .zip, .npz) or features .npz")],
    k: Annotated[int, typer.Option(min=1, help="nearest neighbour k")] = 5,
    max_size: Annotated[int, typer.Option(min=0, help="points per set: a random subset as the seed's prdc.py "
                                                      "(EDM's, seed 0); 0: all")] = 5000,
    chunk: Annotated[int, typer.Option(min=1, help="rows per distance block")] = 4096,
    weights: Weights = None,
    device: Device = "auto",
    batch: Batch = 250,
    resize: Resize = "tf",
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Precision, recall, density and coverage (Naeem et al. 2020) in Inception feature space."""
    from diffsampler.imagesets import check_image_set

    from .fid import _device
    from .prdc import check_k, prdc, set_size, stored_features, subset

    _check_resize(resize)
    stored = {"real": stored_features(real, resize=resize), "fake": stored_features(fake, real=False, resize=resize)}
    sets = (("real", real), ("fake", fake))
    for what, path in sets:
        if stored[what] is None:
            check_image_set(path)  # both sets, before either is embedded
    sizes = {what: len(kept) if (kept := stored[what]) is not None else set_size(path, features=True)
             for what, path in sets}  # both read, then k: a set that is no image set is named first
    for what, path in sets:
        check_k(k, sizes[what], f"{what} {str(path)!r}", max_size=max_size)

    def features(path: Path, what: str) -> np.ndarray:
        keep = subset(sizes[what], max_size)
        kept = stored[what]
        if kept is not None:
            return kept if keep is None else kept[keep]
        return np.concatenate(list(_embedded(path, weights=weights, device=device, batch=batch, what=what,
                                             keep=keep, resize=resize)))

    values = prdc(features(real, "real"), features(fake, "fake"), k=k, chunk=chunk, device=_device(device))
    if json_out:
        from diffsampler.cli._common import print_json

        used = {what: min(sizes[what], max_size or sizes[what]) for what in sizes}
        print_json({**values, "k": k, "max_size": max_size, "resize": resize, "real_count": used["real"],
                    "fake_count": used["fake"]})
        return
    _console().print("  ".join(f"{name} {v:.4f}" for name, v in values.items()), highlight=False, soft_wrap=True)


def clip_score_cmd(
    images: Annotated[Path, typer.Option(help="image set: folder of PNGs, .zip or .npz (arr_0)")],
    prompts: Annotated[Path, typer.Option(help="CSV with a 'text' column, or a text file, one prompt a line")],
    model: Annotated[str, typer.Option(help="transformers CLIP directory or hub id")] = "laion/CLIP-ViT-g-14-laion2B-s34B-b88K",
    pairing: Annotated[str, typer.Option(
        help="which prompt each image is scored against: auto (its recorded label, else seed mod N, else "
        "image i with prompt i), labels, seed or index", metavar="auto|labels|seed|index",
    )] = "auto",
    device: Device = "auto",
    batch: Batch = 64,
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """CLIP score: 100 x mean cosine similarity between each image and the prompt it was made from (the seed's)."""
    from diffsampler.imagesets import check_image_set, iter_images

    from .clip_score import CLIPEncoder, clip_score, load_prompts, pair_prompts, recorded_labels
    from .fid import _device
    from .prdc import set_size

    check_image_set(images)
    texts = load_prompts(prompts)
    target = _device(device)
    recorded = recorded_labels(images)
    paired = pair_prompts(set_size(images), len(texts), labels=recorded.labels, seeds=recorded.seeds,
                          mode=pairing, prompts_name=str(prompts), source=recorded.source)
    _err().print(f"pairing: {paired.describe()}", highlight=False, soft_wrap=True, markup=False)
    encoder = CLIPEncoder.load(model, device=target)
    score, count = clip_score(encoder, iter_images(images, batch), [texts[i] for i in paired.indices])
    if json_out:
        from diffsampler.cli._common import print_json

        print_json({"clip": score, "count": count, "pairing": paired.how})
        return
    _console().print(f"CLIP score {score:.4f}  ({count} images)", highlight=False, soft_wrap=True)


def add_commands(app: typer.Typer) -> None:
    """Add this plugin's commands to the ``diffsampler`` app."""
    fid_app = typer.Typer(help="Frechet Inception Distance (FID's Inception-v3, TensorFlow's input resize as EDM).",
                          no_args_is_help=True)
    fid_app.command("ref")(fid_ref)
    fid_app.command("calc")(fid_calc)
    app.add_typer(fid_app, name="fid")
    app.command("prdc")(prdc_cmd)
    app.command("clip-score")(clip_score_cmd)
