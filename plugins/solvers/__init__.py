"""Built-in ODE solvers (entry point ``solvers``)."""

from __future__ import annotations

from diffsampler import hookimpl
from diffsampler.hookspecs import Register

from .deis import DEIS
from .dpm import DPM2
from .dpmpp import DPMSolverPP
from .euler import Euler
from .heun import Heun
from .ipndm import IPNDM
from .ipndm_v import IPNDMV
from .unipc import UniPC

SOLVERS: dict[str, tuple[type, str]] = {
    "euler": (Euler, "Euler / DDIM, order 1, 1 NFE per step"),
    "heun": (Heun, "Heun (EDM), order 2, 2 NFE per step"),
    "dpm": (DPM2, "DPM-Solver-2 (singlestep), order 2, 2 NFE per step"),
    "dpmpp": (DPMSolverPP, "multistep DPM-Solver++ (2M/3M), order <= 3, 1 NFE per step"),
    "unipc": (UniPC, "UniPC predictor-corrector, order <= 3, 1 NFE per step"),
    "deis": (DEIS, "DEIS tAB / rhoAB multistep, order <= 4, 1 NFE per step"),
    "ipndm": (IPNDM, "iPNDM: Adams-Bashforth, fixed weights, order <= 4, 1 NFE per step"),
    "ipndm_v": (IPNDMV, "variable-step Adams-Bashforth, order <= 4, 1 NFE per step"),
}


@hookimpl
def register_solvers(register: Register) -> None:
    for name, (cls, summary) in SOLVERS.items():
        register(name, cls, summary=summary, options=getattr(cls, "Options", None))
