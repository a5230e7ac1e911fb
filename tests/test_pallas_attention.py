"""The ``pallas`` attention kernels (Pallas interpret mode on CPU) equal the dense reference: random
memory lengths, empty and full memory, a partial last memory tile, padded chunks, one decoding row,
GQA (fp32 and the bf16 word-split read), the stacked memory with a layer index, non-causal, per
shard on a mesh; values and gradients (<= 1e-5 fp32, through the backward kernels); and the whole
model with ``attention: pallas`` equals ``xla``. Also the ``cudnn`` construction (run through XLA's
lowering) equals the reference."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from vxl_jax.runtime import sharding as sh
from vxl_jax.config import ConfigError
from vxl_jax.model import attention, random_model
from vxl_jax.model.pallas_attention import pallas_attention, tpu_supported
from vxl_jax.model.pallas_tiles import Plan

# Small tiles: many query / key / memory tiles, a partial last memory tile (M = 70), causal skipping.
BLOCKS = dict(block_q=16, block_k=16, block_mem=24)


def _inputs(seed, B=2, T=40, H=4, KV=2, D=8, M=70, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # noqa: E731
    return arr(B, T, H, D), arr(B, T, KV, D), arr(B, T, KV, D), arr(B, M, KV, D), arr(B, M, KV, D)


def _pallas(q, k, v, **kw):
    return pallas_attention(q, k, v, **BLOCKS, **kw)


@pytest.mark.parametrize("mem_len,n_valid", [
    ((0, 53), (40, 27)),  # empty memory in one row; a padded chunk in the other
    ((70, 24), (1, 40)),  # full buffer (partial last tile); exactly one memory tile; a one-row chunk
    ((5, 33), (40, 40)),  # lengths off tile boundaries
])
def test_values_and_gradients_equal_reference(mem_len, n_valid):
    q, k, v, mk, mv = _inputs(0)
    T = q.shape[1]
    mem_len = jnp.asarray(mem_len, jnp.int32)
    valid = jnp.arange(T)[None] < jnp.asarray(n_valid)[:, None]
    kw = dict(valid=valid, mem_k=mk, mem_v=mv, mem_len=mem_len)
    ref = attention.attend(q, k, v, backend="reference", **kw)
    got = jax.jit(lambda *x: _pallas(*x, **kw))(q, k, v)
    rows = np.asarray(valid)  # padded rows are never read downstream
    np.testing.assert_allclose(np.asarray(got)[rows], np.asarray(ref)[rows], atol=1e-5, rtol=0)

    w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * valid[..., None, None]

    def grads(fn):
        f = lambda *x: jnp.sum(fn(*x[:3], valid=valid, mem_k=x[3], mem_v=x[4], mem_len=mem_len) * w)  # noqa: E731
        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4)))(q, k, v, mk, mv)

    ref_fn = lambda *a, **kw: attention.attend(*a, backend="reference", **kw)  # noqa: E731
    for name, a, b in zip("q k v mem_k mem_v".split(), grads(ref_fn), grads(_pallas)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0, err_msg=name)


def test_padded_rows_give_zero_and_no_memory():
    """No memory at all; rows of a chunk whose keys are all invalid see nothing and give 0."""
    q, k, v, _, _ = _inputs(2)
    valid = jnp.arange(q.shape[1])[None] < jnp.asarray([40, 0])[:, None]
    got = _pallas(q, k, v, valid=valid)
    ref = attention.attend(q, k, v, valid=valid, backend="reference")
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(ref[0]), atol=1e-5, rtol=0)
    assert not np.asarray(got[1]).any()


def test_non_causal_without_memory_equals_reference():
    q, k, v, _, _ = _inputs(3, T=24)
    got = _pallas(q, k, v, causal=False)
    ref = attention.attend(q, k, v, causal=False, backend="reference")
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0)


def test_decode_row_gqa_reads_only_filled_memory():
    """One new token, 8 query heads over 2 KV heads; empty slots hold NaN: nothing past mem_len is read."""
    q, k, v, mk, mv = _inputs(4, T=1, H=8, KV=2, M=300)
    mem_len = jnp.asarray([37, 300], jnp.int32)
    slot = jnp.arange(mk.shape[1])[None, :, None, None]
    poison = lambda m: jnp.where(slot < mem_len[:, None, None, None], m, jnp.nan)  # noqa: E731
    ref = attention.attend(q, k, v, mem_k=mk, mem_v=mv, mem_len=mem_len, backend="reference")
    got = _pallas(q, k, v, mem_k=poison(mk), mem_v=poison(mv), mem_len=mem_len)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_four_kv_heads(dtype, atol):
    """KV = 4: per-head strided rows; in bf16 two heads share each 32-bit word (both halves are used)."""
    q, k, v, mk, mv = _inputs(5, T=24, H=8, KV=4, M=50, dtype=dtype)
    kw = dict(mem_k=mk, mem_v=mv, mem_len=jnp.asarray([50, 19], jnp.int32))
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    ref = attention.attend(f32(q), f32(k), f32(v), backend="reference", mem_k=f32(mk), mem_v=f32(mv),
                           mem_len=kw["mem_len"])
    got = _pallas(q, k, v, **kw)
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref), atol=atol, rtol=0)


def test_stacked_memory_layer_index():
    """Inference reads layer l's tiles from the stacked [L, B, M, KV, D] buffer (layer scalar-prefetched)."""
    q, k, v, mk, mv = _inputs(6, T=9)
    stack_k, stack_v = jnp.stack([mk * 0.5, mk, -mk]), jnp.stack([mv, mv * 2.0, mv + 1.0])
    mem_len = jnp.asarray([70, 31], jnp.int32)
    f = jax.jit(lambda i: _pallas(q, k, v, mem_k=stack_k, mem_v=stack_v, mem_len=mem_len, mem_layer=i))
    for layer in (0, 2):
        ref = attention.attend(q, k, v, mem_k=stack_k[layer], mem_v=stack_v[layer], mem_len=mem_len,
                               backend="reference")
        np.testing.assert_allclose(np.asarray(f(jnp.int32(layer))), np.asarray(ref), atol=1e-5, rtol=0)
    g = jax.grad(lambda s: jnp.sum(_pallas(q, k, v, mem_k=s, mem_v=stack_v, mem_len=mem_len,
                                           mem_layer=jnp.int32(1))))(stack_k)
    g_ref = jax.grad(lambda m: jnp.sum(attention.attend(q, k, v, mem_k=m, mem_v=stack_v[1], mem_len=mem_len,
                                                        backend="reference")))(mk)
    np.testing.assert_allclose(np.asarray(g[1]), np.asarray(g_ref), atol=1e-5, rtol=0)
    assert not np.asarray(g[0]).any() and not np.asarray(g[2]).any()


@pytest.mark.slow  # Pallas interpret mode on a mesh: CI's Python 3.11 leg only
def test_on_a_mesh_runs_per_shard():
    """Under the inference rules on a data 2 x tensor 2 mesh the kernel runs inside shard_map (one
    sequence, one KV head and its query heads per device); values and gradients equal the reference."""
    q, k, v, mk, mv = _inputs(9, T=12, M=30)
    stack_k, stack_v = jnp.stack([mk, -mk]), jnp.stack([mv, mv + 1.0])
    mem_len = jnp.asarray([7, 30], jnp.int32)
    mesh = sh.inference_mesh({"data": 2, "tensor": 2})

    def f(q, mk):
        return _pallas(q, k, v, mem_k=mk, mem_v=stack_v, mem_len=mem_len, mem_layer=jnp.int32(1))

    def ref(q, mk):
        return attention.attend(q, k, v, mem_k=mk[1], mem_v=stack_v[1], mem_len=mem_len, backend="reference")

    with sh.activation_sharding(mesh, "inference"):
        assert "shard_map" in str(jax.make_jaxpr(f)(q, stack_k))
        got = jax.jit(f)(q, stack_k)
        grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1)))(q, stack_k)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref(q, stack_k)), atol=1e-5, rtol=0)
    ref_grads = jax.grad(lambda *a: jnp.sum(ref(*a) ** 2), argnums=(0, 1))(q, stack_k)
    for a, b in zip(ref_grads, grads):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)


def test_plan_tiles():
    # a 7B prefill window: 1620 rows in 7 even query tiles of 232 (4 padding rows), keys in tiles of 256
    p = Plan(1440 + 180, 16384, 256, 256, 512)
    assert (p.tq, p.nq, p.tq_pad, p.kb, p.nk, p.mb, p.n_mem) == (232, 7, 1624, 256, 7, 512, 32)
    assert [int(p.last_chunk_tile(i, True)) for i in range(p.nq)] == [0, 1, 2, 3, 4, 5, 6]
    assert int(Plan(1620, 1000, 256, 256, 512).last_chunk_tile(0, False)) == 6
    # decoding: one row padded to 8, long memory tiles
    d = Plan(1, 16384, 256, 256, 512)
    assert (d.tq, d.kb, d.mb, d.n_mem) == (8, 8, 2048, 8)
    with pytest.raises(ValueError, match="block_q"):
        Plan(10, 10, 12, 16, 16)


def test_tpu_support_rule():
    """Mosaic tiles lane-aligned heads and loads per-head rows of 32-bit keys, or of 16-bit keys with
    one or an even number of KV heads; the rest takes the blocked path on TPU."""
    assert tpu_supported(128, 4, jnp.bfloat16, jnp.bfloat16) and tpu_supported(128, 3, jnp.float32)
    assert tpu_supported(128, 1, jnp.bfloat16)
    assert not tpu_supported(64, 16, jnp.bfloat16)  # CLIP ViT-L
    assert not tpu_supported(128, 3, jnp.float32, jnp.bfloat16)


@pytest.mark.parametrize("platform,head_dim,kernels", [
    ("tpu", 128, ["vxl_memory_chunk_attention", "vxl_attention_dq", "vxl_attention_dkv", "vxl_attention_dmem"]),
    ("tpu", 64, []),  # a head size the kernel does not tile: the blocked path
    ("cuda", 128, []),  # GPUs: the blocked path (interpreting a TPU kernel would be slow)
])
def test_lowering_picks_the_kernel_per_platform(platform, head_dim, kernels):
    """Kernel or not is decided when lowering: exported from this CPU host for another platform."""
    q, k, v, mk, mv = _inputs(10, T=9, D=head_dim, M=20)

    def loss(*x):
        return jnp.sum(pallas_attention(*x[:3], mem_k=x[3], mem_v=x[4], mem_len=jnp.asarray([5, 20])))

    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))

    text = export.export(jax.jit(grads), platforms=[platform])(q, k, v, mk, mv).mlir_module()
    assert sorted(re.findall(r'kernel_name = "([^"]+)"', text)) == sorted(kernels)


def test_sdpa_construction_equals_reference():
    """The cudnn path's dense [memory || chunk] layout with a boolean mask (run by XLA here): stale
    memory slots hold NaN, one batch row has no valid key at all (its rows give 0)."""
    q, k, v, mk, mv = _inputs(7, T=12, H=4, KV=2, M=30)
    mem_len = jnp.asarray([17, 0], jnp.int32)
    valid = jnp.arange(12)[None] < jnp.asarray([9, 0])[:, None]
    slot = jnp.arange(30)[None, :, None, None]
    poison = lambda m: jnp.where(slot < mem_len[:, None, None, None], m, jnp.nan)  # noqa: E731
    ref = attention.attend(q, k, v, valid=valid, mem_k=mk, mem_v=mv, mem_len=mem_len, backend="xla")
    got = attention.attend(q, k, v, valid=valid, mem_k=poison(mk), mem_v=poison(mv), mem_len=mem_len,
                           backend="dot_product")
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0)
    assert not np.asarray(got[1]).any()
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        attention.attend(q, k, v, mem_k=mk, mem_v=mv, mem_len=mem_len, backend="cudnn")


def test_cudnn_float32_config_is_refused(tiny_cfg):
    with pytest.raises(ConfigError, match="cudnn.*bfloat16"):
        tiny_cfg.with_runtime(attention="cudnn")
    assert tiny_cfg.with_runtime(attention="cudnn", compute_dtype="bfloat16").runtime.attention == "cudnn"


def test_model_with_pallas_equals_xla(tiny_cfg):
    """Two 1440-token windows (ratio 16) over the prompt's memory, then greedy decoding: logits,
    memory and ids with ``attention: pallas`` equal ``xla``."""
    from vxl_jax.infer.api import VideoXL

    rng = np.random.default_rng(8)
    ids = np.concatenate([rng.integers(3, 500, 6), [-200], rng.integers(3, 500, 5)]).astype(np.int32)
    feats = rng.normal(size=(1440 + 288, tiny_cfg.lm.hidden_size)).astype(np.float32)
    runs = {}
    for backend in ("xla", "pallas"):
        cfg = tiny_cfg.with_runtime(attention=backend)
        vx = VideoXL(cfg, random_model(cfg, seed=5, std=0.2))
        res = vx.prefill(ids, None, ratio=16, features=feats)
        new, logits = vx.generate(ids, None, ratio=16, features=feats, max_new_tokens=3, return_logits=True)
        runs[backend] = (res, new, logits)
    (a, new_a, la), (b, new_b, lb) = runs["xla"], runs["pallas"]
    assert a.sizes == b.sizes
    np.testing.assert_allclose(b.logits, a.logits, atol=1e-5, rtol=0)
    n = a.sizes["total"]
    np.testing.assert_allclose(np.asarray(b.memory.k)[:, :, :n], np.asarray(a.memory.k)[:, :, :n], atol=1e-5)
    np.testing.assert_array_equal(new_b, new_a)
    np.testing.assert_allclose(lb, la, atol=1e-5, rtol=0)


def test_golden_video_case_with_pallas(golden_dir, golden_converted):
    """The original's video case (ratio 16, partial last window) through the pallas kernels (CLIP and
    LM, interpret mode): post-video logits <= 1e-4 and the greedy ids exact."""
    from safetensors.numpy import load_file

    from vxl_jax.infer.api import VideoXL
    from vxl_jax.config import RuntimeConfig
    from vxl_jax.convert.folder import load_converted

    cfg, model, tokenizer, gen = load_converted(golden_converted[0], runtime=RuntimeConfig(attention="pallas"))
    assert cfg.runtime.attention == "pallas"
    vx = VideoXL(cfg, model, tokenizer, gen)
    C = load_file(str(golden_dir / "cases.safetensors"))
    ids, px = C["video.input_ids"][0], C["video.frames_u8"].astype(np.float32) / 64.0 - 2.0
    np.testing.assert_allclose(vx.prefill(ids, px, ratio=16).logits, C["video_r16.logits_forward"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(vx.generate(ids, px, ratio=16, max_new_tokens=6), C["video_r16.generated_ids"])
