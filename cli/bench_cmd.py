"""``diffsampler bench``: sampling throughput, forward time, solver overhead, deviation."""

from __future__ import annotations

import platform
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ._common import err_console, parse_pairs, print_json, table_console


def bench(
    model: Annotated[str, typer.Option(help="registered model (default: the embedded digits network)")] = "digits",
    solver: Annotated[str, typer.Option(help="registered solver")] = "ipndm",
    nfe: Annotated[int, typer.Option(help="denoiser evaluations per sample")] = 5,
    batch: Annotated[str, typer.Option(help="batch sizes, e.g. 128,512")] = "128",
    variant: Annotated[
        list[str] | None,
        typer.Option(help="inference variant, e.g. fp32, bf16+cl, fp16+compile+graph+tune (repeatable; "
                          "fp32 eager is always measured as the reference)"),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "auto",
    repeat: Annotated[int, typer.Option(help="timed repetitions (median reported)")] = 5,
    warmup: Annotated[int, typer.Option(help="untimed warm-up runs")] = 2,
    compile_mode: Annotated[str, typer.Option(help="torch.compile mode")] = "default",
    model_opt: Annotated[list[str] | None, typer.Option("--model-opt", help="model option key=value")] = None,
    opt: Annotated[list[str] | None, typer.Option("--opt", help="solver option key=value")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Sampling speed per inference variant: images/s, ms/forward, overhead, memory, deviation.

    For one model, solver and NFE; the deviation is measured against the fp32-eager output.
    """
    import attrs
    import torch

    from diffsampler.bench import Variant, run_bench
    from diffsampler.devices import resolve_device
    from diffsampler.errors import OptionError

    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise OptionError(f"--batch expects sizes like 128,512, got {batch!r}") from None
    if not batches or min(batches) < 1:
        raise OptionError(f"--batch expects positive sizes, got {batch!r}")
    device = resolve_device(device)
    variants = [Variant()] + [v for v in (Variant.parse(t) for t in variant or []) if not v.is_reference]
    rows = run_bench(
        model=model, model_options=parse_pairs(model_opt, "--model-opt"), solver=solver,
        solver_options=parse_pairs(opt, "--opt"), nfe=nfe, batches=batches, variants=variants,
        device=device, repeat=repeat, warmup=warmup, compile_mode=compile_mode,
        on_row=lambda r: err_console.print(f"  {r.variant} batch {r.batch}: {r.images_per_s:.1f} img/s"),
    )
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    machine = {"device": gpu or f"CPU ({platform.processor() or platform.machine()}, "
               f"{torch.get_num_threads()} threads)", "torch": torch.__version__}
    if as_json:
        print_json({"machine": machine, "model": model, "solver": solver, "nfe": nfe,
                    "rows": [attrs.asdict(r) for r in rows]})
        return
    table = Table(title=f"{escape(model)}, {escape(solver)}, NFE {nfe} on {escape(machine['device'])}",
                  title_justify="left")
    for column in ("variant", "batch", "img/s", "ms/forward", "overhead", "peak MiB", "max|dev|", "rel L2 dev"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            escape(r.variant), str(r.batch), f"{r.images_per_s:.1f}", f"{r.ms_per_forward:.2f}",
            f"{r.overhead_ratio:.3f}", "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}",
            f"{r.max_abs_deviation:.2e}", f"{r.rel_l2_deviation:.2e}",
        )
    table_console().print(table)
