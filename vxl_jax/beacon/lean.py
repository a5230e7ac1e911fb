"""The window scan for training, with a backward that keeps one copy of the memory.

The memory is append-only: window w reads slots ``[0, length_w)`` and writes its beacons at
``[length_w, length_{w+1})``. So the memory window w saw is the *final* memory read up to
``length_w``, and the backward needs no per-window copy of it. ``jax.custom_vjp`` makes that
explicit:

- forward: the plain scan; it keeps the final K/V, each window's size counters [W, B] and its
  inputs (pixels), nothing else;
- backward: a reverse scan over windows carrying the memory cotangent (one buffer) and the
  parameter cotangent (in the parameters' dtype, as autodiff of the plain scan accumulates it).
  Window w is recomputed from its inputs and the final memory with the counters it started with, and differentiated on its own; the ratio branch is chosen *before*
  differentiating, so only the chosen branch's residuals exist, for one window at a time.

With ``then`` (the text scored after the video), the backward starts from ``then``'s gradient: its
parameter cotangent is the reverse scan's initial accumulator, so no second parameter-sized gradient
waits for the scan to finish (on a 7B train step, one parameter-sized buffer less at the peak).

The result equals differentiating the plain scan (``compress_windows``), to fp32 rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from vxl_jax.beacon.windows import encode_window, pick_branch, window_step
from vxl_jax.beacon.memory import KVMemory
from vxl_jax.runtime.sharding import constrain_memory, constrain_params

_COUNTERS = ("length", "n_prefix", "n_beacons", "n_text")


def _with_counters(k, v, counters) -> KVMemory:
    return KVMemory(k, v, *counters)


def _window(graphdef, params, rest, k, v, counters, inp, n, *, ratio, from_pixels, keep):
    """One window on the memory ``(k, v, counters)`` -> (new k, new v, new counters)."""
    model = nnx.merge(graphdef, params, rest)
    k, v = constrain_memory(k, v)
    feats = encode_window(model, inp, from_pixels)
    mem = window_step(model, _with_counters(k, v, counters), feats, n, ratio, keep=keep, sliced_memory=True)[0]
    return *constrain_memory(mem.k, mem.v), tuple(getattr(mem, c) for c in _COUNTERS)


def _forward_scan(steps, params, rest, k, v, counters, windows, n_valid, ratio_idx):
    """The plain scan over windows -> ((final k, v, counters), counters each window started with [W, ...])."""
    def body(carry, xs):
        k, v, counters = carry
        inp, n, idx = xs
        branches = [functools.partial(s, params, rest) for s in steps]
        return pick_branch(idx, branches, k, v, counters, inp, n), counters

    return jax.lax.scan(body, (k, v, counters), (windows, n_valid, ratio_idx))


def _backward_scan(steps, params, rest, k_final, v_final, starts, windows, n_valid, ratio_idx, dparams, gk, gv):
    """Reverse scan over windows from the cotangents (dparams, gk, gv) of what followed the windows
    -> (dparams + every window's parameter cotangent, memory cotangents dk, dv at the first window)."""
    def window_vjp(step, counters, inp, n, dk, dv):
        f = lambda p, k, v: step(p, rest, k, v, counters, inp, n)[:2]  # noqa: E731
        _, pull = jax.vjp(f, params, k_final, v_final)
        return pull((dk, dv))

    def back(carry, xs):
        dparams, dk, dv = carry
        counters, inp, n, idx = xs
        dp, dk, dv = pick_branch(idx, [functools.partial(window_vjp, s) for s in steps], counters, inp, n, dk, dv)
        # summed in the parameters' dtype, as differentiating the plain scan does
        dparams = constrain_params(jax.tree.map(lambda a, b: a + b.astype(a.dtype), dparams, dp), like=params)
        return (dparams, *constrain_memory(dk, dv)), None

    carry = (constrain_params(dparams, like=params), *constrain_memory(gk, gv))
    return jax.lax.scan(back, carry, (starts, windows, n_valid, ratio_idx), reverse=True)[0]


def compress_windows_lean(model, mem: KVMemory, windows, n_valid, ratio_idx, *, ratios: tuple[int, ...],
                          from_pixels: bool, keep: bool = True, then=None, then_args=()):
    """Same arguments and result as :func:`vxl_jax.beacon.windows.compress_windows`; lean backward.

    Gradients flow to the model's ``nnx.Param`` leaves and to the incoming memory K/V; not to the
    window inputs (pixels or features). With ``then(model, memory, *then_args)`` -> outputs (a pytree,
    e.g. a loss sum and a token count), the result is ``then`` of the final memory instead of the memory;
    ``then_args`` (arrays) get no gradient.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    steps = [functools.partial(_window, graphdef, ratio=int(r), from_pixels=from_pixels, keep=keep) for r in ratios]

    def tail(params, rest, final, args):
        k, v, counters = final
        return then(nnx.merge(graphdef, params, rest), _with_counters(k, v, counters), *args)

    def result(params, rest, final, args):
        return final if then is None else tail(params, rest, final, args)

    @jax.custom_vjp
    def run(params, rest, k, v, counters, windows, n_valid, ratio_idx, args):
        return result(params, rest, _forward_scan(steps, params, rest, k, v, counters, windows, n_valid, ratio_idx)[0],
                      args)

    def run_fwd(params, rest, k, v, counters, windows, n_valid, ratio_idx, args):
        final, starts = _forward_scan(steps, params, rest, k, v, counters, windows, n_valid, ratio_idx)
        return result(params, rest, final, args), (params, rest, final, starts, windows, n_valid, ratio_idx, args)

    def run_bwd(res, g):
        params, rest, final, starts, windows, n_valid, ratio_idx, args = res
        if then is None:
            (gk, gv, _), dparams = g, jax.tree.map(jnp.zeros_like, params)
        else:  # the scan accumulates onto the gradient of what follows the video
            pull = jax.vjp(lambda p, k, v: tail(p, rest, (k, v, final[2]), args), params, final[0], final[1])[1]
            dparams, gk, gv = pull(g)
        dparams, dk, dv = _backward_scan(steps, params, rest, final[0], final[1], starts, windows, n_valid, ratio_idx,
                                         dparams, gk, gv)
        return dparams, None, dk, dv, None, None, None, None, None

    run.defvjp(run_fwd, run_bwd)
    counters = tuple(getattr(mem, c) for c in _COUNTERS)
    out = run(params, rest, mem.k, mem.v, counters, windows, n_valid, ratio_idx, tuple(then_args))
    return _with_counters(*out) if then is None else out
