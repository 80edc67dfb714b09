"""Each solver against an independent float64 implementation written here from the papers.

The multistep exponential integrators are re-implemented in the VP form of the papers and of
the official codes (``x_vp = alpha x``, ``alpha = 1 / sqrt(1 + sigma^2)``, ``sigma_vp = alpha
sigma``, ``lambda = log(alpha / sigma_vp) = -log sigma``), where the solvers integrate in EDM's
variables; the Adams-type methods use weights from a moment (Vandermonde) system or from
``scipy.integrate.quad``, where the solvers use Gauss-Legendre. The orders of the steps follow
the seed (warm-up ``i + 1``; ``lower_order_final``: at most the steps left) and UniPC runs no
corrector after the last step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import diffsampler as ds
from diffsampler.plugins.models.gmm import gmm

MODEL = gmm(shape=(3,), components=4, spread=0.3, seed=3)
SIGMA_MAX, SIGMA_MIN = 20.0, 0.05


def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return MODEL(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))


def start() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, generator=g, dtype=torch.float64) * SIGMA_MAX


def schedule(n: int) -> list[float]:
    return ds.get_schedule("polynomial", rho=7.0).sigmas(n, SIGMA_MIN, SIGMA_MAX).tolist()


def first_denoised(x: torch.Tensor, sigma: float, afs: bool) -> torch.Tensor:
    """The first data prediction; AFS: as if the data were a point mass at 0 (AMED, Sec. 3.3)."""
    return x - sigma * x / math.sqrt(1 + sigma**2) if afs else denoise(x, sigma)


def quantile_threshold(x0: torch.Tensor) -> torch.Tensor:
    s = torch.quantile(x0.abs().reshape(x0.shape[0], -1), 0.995, dim=1).clamp_min(1.0)[:, None]
    return torch.maximum(torch.minimum(x0, s), -s) / s


def close(ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-11) -> bool:
    return float((ours - ref).abs().max()) <= tol * float(ref.abs().max())


def seed_order(i: int, n: int, max_order: int, lower_order_final: bool) -> int:
    if not lower_order_final:
        return min(max_order, i + 1)
    return i + 1 if i + 1 < max_order else min(max_order, n - (i + 1))


# -- one-step methods -------------------------------------------------------------------------

def heun_reference(x, sig, afs):
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        d = x / math.sqrt(1 + s * s) if (afs and i == 0) else (x - denoise(x, s)) / s
        x_e = x + (t - s) * d
        d2 = (x_e - denoise(x_e, t)) / t
        x = x + (t - s) * (d + d2) / 2
    return x


def dpm2_reference(x, sig, afs, r):
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        # midpoint uniform in log sigma at fraction r
        mid = math.exp(math.log(s) + r * (math.log(t) - math.log(s)))
        d = x / math.sqrt(1 + s * s) if (afs and i == 0) else (x - denoise(x, s)) / s
        x_m = x + (mid - s) * d
        d_m = (x_m - denoise(x_m, mid)) / mid
        x = x + (t - s) * ((1 - 1 / (2 * r)) * d + d_m / (2 * r))
    return x


@pytest.mark.parametrize("n", [2, 3, 6])
@pytest.mark.parametrize("afs", [False, True])
def test_heun_and_dpm2_match_reference(n, afs):
    sig, x = schedule(n), start()
    assert close(ds.get_solver("heun").sample(MODEL, x, sig, afs=afs).x, heun_reference(x, sig, afs))
    for r in (0.5, 0.3, 1.0):
        ours = ds.get_solver("dpm", r=r).sample(MODEL, x, sig, afs=afs).x
        assert close(ours, dpm2_reference(x, sig, afs, r))


# -- Adams-type methods -----------------------------------------------------------------------

def moment_weights(nodes: list[float], a: float, b: float) -> np.ndarray:
    """Weights w with sum_j w_j p(nodes_j) = int_a^b p for polynomials of degree < len(nodes)."""
    k = len(nodes)
    c = nodes[0]
    vander = np.array([[(node - c) ** m for node in nodes] for m in range(k)])
    moments = np.array([((b - c) ** (m + 1) - (a - c) ** (m + 1)) / (m + 1) for m in range(k)])
    return np.linalg.solve(vander, moments)


FIXED = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -4 / 3, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -3 / 8]}


def adams_reference(x, sig, afs, max_order, weights_of):
    ds_ = []
    for i in range(len(sig) - 1):
        s = sig[i]
        d = x / math.sqrt(1 + s * s) if (afs and i == 0) else (x - denoise(x, s)) / s
        ds_.insert(0, d)
        k = min(max_order, i + 1)
        w = weights_of(sig, i, k)
        x = x + sum(wj * dj for wj, dj in zip(w, ds_[:k], strict=True))
    return x


def fixed_weights(sig, i, k):
    return [(sig[i + 1] - sig[i]) * b for b in FIXED[k]]


def exact_weights(sig, i, k):
    return moment_weights([sig[i - j] for j in range(k)], sig[i], sig[i + 1])


# DEIS tAB in VP time (EDM's VP fit to [0.002, 80], epsilon_s = 1e-3), written out here
_BETA_D = 2 * (math.log(1 + 0.002**2) / 1e-3 - math.log(1 + 80.0**2)) / (1e-3 - 1)
_BETA_MIN = math.log(1 + 80.0**2) - 0.5 * _BETA_D


def vp_t(sigma: float) -> float:
    return (math.sqrt(_BETA_MIN**2 + 2 * _BETA_D * math.log(1 + sigma**2)) - _BETA_MIN) / _BETA_D


def vp_dsigma_dt(t: float) -> float:
    e = math.exp(0.5 * _BETA_D * t * t + _BETA_MIN * t)
    return (_BETA_D * t + _BETA_MIN) * e / (2 * math.sqrt(e - 1))


def tab_weights(sig, i, k):
    if k == 1:
        return [sig[i + 1] - sig[i]]
    ts = [vp_t(sig[i - j]) for j in range(k)]

    def basis(j, tau):
        return math.prod((tau - ts[m]) / (ts[j] - ts[m]) for m in range(k) if m != j)

    a, b = vp_t(sig[i]), vp_t(sig[i + 1])
    return [quad(lambda tau, j=j: vp_dsigma_dt(tau) * basis(j, tau), a, b, epsabs=0, epsrel=1e-13,
                 limit=200)[0] for j in range(k)]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
def test_adams_methods_match_reference(n, afs, max_order):
    sig, x = schedule(n), start()
    cases = [
        ("ipndm", {}, fixed_weights, 1e-11),
        ("ipndm_v", {}, exact_weights, 1e-10),
        ("deis", {"deis_mode": "rhoab"}, exact_weights, 1e-10),
        ("deis", {"deis_mode": "tab"}, tab_weights, 1e-9),
    ]
    for name, options, weights_of, tol in cases:
        ours = ds.get_solver(name, max_order=max_order, **options).sample(MODEL, x, sig, afs=afs).x
        ref = adams_reference(x, sig, afs, max_order, weights_of)
        assert close(ours, ref, tol), (name, options)


# -- DPM-Solver++ in VP form (Lu et al. 2022b) ---------------------------------------------------

def vp(sigma: float) -> tuple[float, float, float]:
    """(alpha_t, sigma_t, lambda_t) of the VP process equivalent to EDM's sigma."""
    alpha = 1 / math.sqrt(1 + sigma**2)
    return alpha, alpha * sigma, math.log(1 / sigma)


def model_vp(x_vp, sigma, predict_x0, thresholding, first, afs):
    """Data or noise prediction at the VP state ``x_vp``."""
    alpha, _, _ = vp(sigma)
    x = x_vp / alpha
    x0 = first_denoised(x, sigma, afs) if first else denoise(x, sigma)
    if predict_x0:
        return quantile_threshold(x0) if thresholding else x0
    return (x - x0) / sigma  # eps


def dpmpp_reference(x, sig, *, max_order, predict_x0, lower_order_final, afs, thresholding):
    n = len(sig)
    x_vp = x * vp(sig[0])[0]
    ms, lams = [], []
    for i in range(n - 1):
        ms.append(model_vp(x_vp, sig[i], predict_x0, thresholding, i == 0, afs))
        lams.append(vp(sig[i])[2])
        order = seed_order(i, n, max_order, lower_order_final)
        a_s, s_s, _ = vp(sig[i])
        a_t, s_t, lam_t = vp(sig[i + 1])
        h = lam_t - lams[-1]
        m0 = ms[-1]
        if predict_x0:
            lin, c1 = s_t / s_s, a_t * (math.exp(-h) - 1)
        else:
            lin, c1 = a_t / a_s, s_t * (math.exp(h) - 1)
        if order == 1:
            corr = c1 * m0
        elif order == 2:
            r0 = (lams[-1] - lams[-2]) / h
            corr = c1 * m0 + 0.5 * c1 * (m0 - ms[-2]) / r0
        else:
            r0, r1 = (lams[-1] - lams[-2]) / h, (lams[-2] - lams[-3]) / h
            d1_0, d1_1 = (m0 - ms[-2]) / r0, (ms[-2] - ms[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            if predict_x0:
                p1 = math.exp(-h) - 1
                p2 = p1 / h + 1
                corr = a_t * (p1 * m0 - p2 * d1 + (p2 / h - 0.5) * d2)
            else:
                p1 = math.exp(h) - 1
                p2 = p1 / h - 1
                corr = s_t * (p1 * m0 + p2 * d1 + (p2 / h - 0.5) * d2)
        x_vp = lin * x_vp - corr
    return x_vp / vp(sig[-1])[0]


DPMPP_CASES = [
    dict(max_order=m, predict_x0=p, lower_order_final=lof)
    for m in (1, 2, 3) for p in (True, False) for lof in (True, False)
]


@pytest.mark.parametrize("options", DPMPP_CASES)
@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_dpmpp_matches_vp_reference(options, n):
    sig, x = schedule(n), start()
    for afs in (False, True):
        thresholds = (False, True) if options["predict_x0"] else (False,)
        for thr in thresholds:
            extra = {"thresholding": "dynamic"} if thr else {}
            ours = ds.get_solver("dpmpp", **options, **extra).sample(MODEL, x, sig, afs=afs).x
            ref = dpmpp_reference(x, sig, afs=afs, thresholding=thr, **options)
            assert close(ours, ref, 1e-10), (afs, thr)


# -- UniPC in VP form (Zhao et al. 2023) ------------------------------------------------------

def unipc_reference(x, sig, *, max_order, predict_x0, lower_order_final, variant, afs, thresholding):
    n = len(sig)
    x_vp = x * vp(sig[0])[0]
    ms = [model_vp(x_vp, sig[0], predict_x0, thresholding, True, afs)]
    lams = [vp(sig[0])[2]]
    for i in range(n - 1):
        order = i + 1 if i + 1 < max_order else (
            min(max_order, n - i - 1) if lower_order_final else max_order)
        use_corrector = i < n - 2
        a_s, s_s, lam_s = vp(sig[i])
        a_t, s_t, lam_t = vp(sig[i + 1])
        h = lam_t - lam_s
        m0 = ms[-1]
        rks = [(lams[-(k + 1)] - lam_s) / h for k in range(1, order)]
        d1s = [(ms[-(k + 1)] - m0) / rk for k, rk in zip(range(1, order), rks, strict=True)]
        hh = -h if predict_x0 else h
        # phi_k(hh) from phi_{k+1}(z) = (phi_k(z) - 1/k!) / z, phi_0 = e^z
        phis = [math.exp(hh)]
        for k in range(order + 1):
            phis.append((phis[-1] - 1 / math.factorial(k)) / hh)
        b_h = hh if variant == "bh1" else math.exp(hh) - 1
        # b_k = hh * k! * phi_{k+1}(hh) / B(h), k = 1..order (Zhao et al. 2023, Eq. 8)
        b = np.array([hh * math.factorial(k) * phis[k + 1] / b_h for k in range(1, order + 1)])
        r_mat = np.array([[r ** (k - 1) for r in [*rks, 1.0]] for k in range(1, order + 1)])
        if predict_x0:
            base = s_t / s_s * x_vp - a_t * (math.exp(-h) - 1) * m0
            scale = a_t * b_h
        else:
            base = a_t / a_s * x_vp - s_t * (math.exp(h) - 1) * m0
            scale = s_t * b_h
        if order == 1:
            x_pred = base
        else:
            rhos_p = [0.5] if order == 2 else np.linalg.solve(r_mat[:-1, :-1], b[:-1])
            x_pred = base - scale * sum(r * d for r, d in zip(rhos_p, d1s, strict=True))
        if not use_corrector:
            x_vp = x_pred
            continue
        m_new = model_vp(x_pred, sig[i + 1], predict_x0, thresholding, False, afs)
        rhos_c = [0.5] if order == 1 else np.linalg.solve(r_mat, b)
        corr = sum((r * d for r, d in zip(rhos_c[:-1], d1s, strict=True)), torch.zeros_like(m0))
        x_vp = base - scale * (corr + rhos_c[-1] * (m_new - m0))
        ms.append(m_new)
        lams.append(lam_t)
    return x_vp / vp(sig[-1])[0]


UNIPC_CASES = [
    dict(max_order=m, predict_x0=p, lower_order_final=lof, variant=v)
    for m in (1, 2, 3) for p in (True, False) for lof in (True, False) for v in ("bh1", "bh2")
]


@pytest.mark.parametrize("options", UNIPC_CASES)
@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_unipc_matches_vp_reference(options, n):
    sig, x = schedule(n), start()
    for afs in (False, True):
        thresholds = (False, True) if options["predict_x0"] else (False,)
        for thr in thresholds:
            extra = {"thresholding": "dynamic"} if thr else {}
            ours = ds.get_solver("unipc", **options, **extra).sample(MODEL, x, sig, afs=afs).x
            ref = unipc_reference(x, sig, afs=afs, thresholding=thr, **options)
            assert close(ours, ref, 1e-10), (afs, thr)


def test_dynamic_thresholding_matches_torch_quantile():
    from diffsampler.plugins.solvers._thresholding import dynamic_thresholding

    g = torch.Generator().manual_seed(0)
    for shape in [(5, 3, 8, 8), (3, 7), (2, 1, 1, 1), (4, 1000)]:
        x0 = torch.randn(*shape, generator=g, dtype=torch.float64) * 2.0
        x0[0] *= 0.1  # one sample inside [-1, 1]: s = 1, unchanged
        ours = dynamic_thresholding(x0)
        assert torch.allclose(ours, quantile_threshold(x0.reshape(shape[0], -1)).reshape(shape),
                              rtol=0, atol=1e-14)
        assert torch.equal(ours[0], x0[0])
        assert ours.abs().max() <= 1.0
    x32 = torch.randn(6, 3, 4, 4, generator=g) * 3
    assert dynamic_thresholding(x32).dtype == torch.float32
