"""Built-in time schedules (entry point ``schedules``)."""

from __future__ import annotations

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .discrete import Discrete
from .logsnr import LogSNR
from .polynomial import Polynomial
from .time_uniform import TimeUniform

SCHEDULES: dict[str, tuple[type, str]] = {
    "polynomial": (Polynomial, "EDM's polynomial schedule (rho)"),
    "logsnr": (LogSNR, "uniform in log sigma (log-SNR), DPM-Solver"),
    "time_uniform": (TimeUniform, "uniform in VP time t^(1/rho), EDM's VP fit (rho)"),
    "discrete": (Discrete, "uniform in the model's own time t^(1/rho) (discrete-time models)"),
}


@hookimpl
def register_schedules(register: Register) -> None:
    for name, (cls, summary) in SCHEDULES.items():
        register(name, cls, summary=summary, options=getattr(cls, "Options", None))
