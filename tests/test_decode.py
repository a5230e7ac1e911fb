"""On-device generation: the compiled decode loop against the host loop it replaced, the JAX logits
processors against transformers' ones, and the sampler's distribution (statistically)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.hf_sampling import hf_greedy, hf_probs, hf_scores
from vxl_jax.infer.sampling import SamplingParams, choose_jax, repetition_penalty_jax, seen_mask, warp_jax


def host_loop(vx, ids, pixels, *, max_new, params, stops, seed=0):
    """The host decoding loop ``VideoXL.generate`` used before on-device decoding (the reference):
    one jitted one-token model call per token, greedy over transformers' processors (``params`` greedy).
    -> (ids [n], logits [n, V], memory length)."""
    assert not params.do_sample
    res = vx.prefill(ids, pixels, ratio=4, extra_slots=max_new + 16)
    mem, last = res.memory, res.logits[-1]
    seen = np.asarray(ids)[np.asarray(ids) >= 0]
    out, step_logits = [], []
    for i in range(max_new):
        step_logits.append(last)
        tok = hf_greedy(last, np.concatenate([seen, np.asarray(out, np.int64)]), params)
        out.append(tok)
        if tok in stops or i == max_new - 1:
            break
        lg, mem = vx.engine.text(mem, jnp.array([[tok]], jnp.int32), jnp.array([1], jnp.int32), kind="text")
        last = np.asarray(lg[0, 0], np.float32)
    return np.asarray(out, np.int32), np.stack(step_logits), int(np.asarray(mem.length)[0])


@pytest.mark.parametrize("penalty,max_new,chunk", [(1.0, 21, 8), (1.3, 21, 8), (1.3, 5, 16), (1.1, 12, 1)])
def test_greedy_equals_host_loop(vx, prompt, penalty, max_new, chunk):
    ids, pixels = prompt
    ref, ref_logits, ref_len = host_loop(vx, ids, pixels, max_new=max_new, stops=set(),
                                         params=SamplingParams(repetition_penalty=penalty))
    new, logits = vx.generate(ids, pixels, ratio=4, max_new_tokens=max_new, stop_ids=[], repetition_penalty=penalty,
                              do_sample=False, chunk=chunk, return_logits=True)
    np.testing.assert_array_equal(new, ref)
    # the decode loop runs the host loop's own text step
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
    assert vx.stats["generated"] == max_new and vx.stats["kept_kv"] == ref_len  # the last token is not fed back


def test_stop_id_mid_chunk(vx, prompt):
    ids, pixels = prompt
    chunk, params = 4, SamplingParams(repetition_penalty=1.3)
    free, _, _ = host_loop(vx, ids, pixels, max_new=20, params=params, stops=set())
    first = {}
    for i, t in enumerate(free.tolist()):
        first.setdefault(t, i)
    at = [i for i in first.values() if i % chunk not in (0, chunk - 1) and i > chunk]  # strictly inside a later chunk
    assert at, f"no mid-chunk first occurrence in {free}"
    stop = int(free[at[0]])
    ref, _, ref_len = host_loop(vx, ids, pixels, max_new=20, params=params, stops={stop})
    streamed = []
    new = vx.generate(ids, pixels, ratio=4, max_new_tokens=20, stop_ids=[stop, 10**6], repetition_penalty=1.3,
                      do_sample=False, chunk=chunk, stream=streamed.append)
    np.testing.assert_array_equal(new, ref)
    np.testing.assert_array_equal(new, free[:at[0] + 1])  # the stop token is included
    np.testing.assert_array_equal(np.concatenate(streamed), new)
    assert [len(s) for s in streamed][:-1] == [chunk] * (len(streamed) - 1)
    assert vx.stats["kept_kv"] == ref_len


def test_one_compilation_per_capacity_and_chunk(vx, prompt):
    ids, pixels = prompt
    vx.generate(ids, pixels, ratio=4, max_new_tokens=7, stop_ids=[], chunk=5)
    keys = [k for k in vx.engine._compiled if k[0] == "decode"]
    compiled = vx.engine.compile_s
    vx.generate(ids, pixels, ratio=4, max_new_tokens=9, stop_ids=[3], chunk=5)  # same capacity bucket
    assert [k for k in vx.engine._compiled if k[0] == "decode"] == keys and vx.engine.compile_s == compiled
    assert vx.stats["decode_compile_s"] == 0 and vx.stats["decode_run_s"] > 0


PARAMS = [
    SamplingParams(do_sample=True),
    SamplingParams(do_sample=True, temperature=0.7, top_k=20, top_p=0.8),
    SamplingParams(do_sample=True, temperature=1.3, top_p=0.5),
    SamplingParams(do_sample=True, top_k=5),
    SamplingParams(do_sample=True, temperature=0.6, top_p=0.95, repetition_penalty=1.4),
]


@pytest.mark.parametrize("p", PARAMS + [SamplingParams(repetition_penalty=1.2)], ids=str)
def test_processors_equal_transformers(p):
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(6, 300)) * 3).astype(np.float32)
    seen = [rng.integers(0, 300, int(n)) for n in rng.integers(0, 40, 6)]
    mask = jnp.stack([seen_mask(s, 300) for s in seen])
    ours = np.asarray(jax.jit(lambda x, m: warp_jax(repetition_penalty_jax(x, m, p.repetition_penalty), p))(logits,
                                                                                                            mask))
    greedy = np.asarray(choose_jax(jnp.asarray(logits), mask, SamplingParams(repetition_penalty=p.repetition_penalty),
                                   jax.random.PRNGKey(0)))
    for row in range(6):
        ref = hf_scores(logits[row], seen[row], p)
        np.testing.assert_array_equal(np.isinf(ours[row]), np.isinf(ref))
        np.testing.assert_allclose(ours[row][np.isfinite(ref)], ref[np.isfinite(ref)], atol=1e-6, rtol=1e-6)
        assert greedy[row] == hf_greedy(logits[row], seen[row], SamplingParams(repetition_penalty=p.repetition_penalty))


@pytest.mark.parametrize("p", PARAMS, ids=str)
def test_sampling_distribution(p):
    """40000 draws (vmap over keys) against the exact warped distribution: total variation and chi-square."""
    rng = np.random.default_rng(4)
    V, N = 64, 40000
    logits = (rng.normal(size=V) * 2).astype(np.float32)
    seen = rng.integers(0, V, 10)
    probs = hf_probs(logits, seen, p)
    keys = jax.random.split(jax.random.PRNGKey(1), N)
    draw = jax.jit(jax.vmap(lambda k: choose_jax(jnp.asarray(logits), seen_mask(seen, V), p, k)))
    counts = np.bincount(np.asarray(draw(keys)), minlength=V)
    assert counts[probs == 0].sum() == 0  # filtered tokens are never drawn
    assert 0.5 * np.abs(counts / N - probs).sum() < 0.02
    big = probs * N >= 5  # chi-square over bins with enough expected draws, the rest pooled
    expected = np.append(probs[big] * N, probs[~big].sum() * N)
    observed = np.append(counts[big], counts[~big].sum())
    keep = expected > 0
    chi2 = (((observed - expected) ** 2)[keep] / expected[keep]).sum()
    df = keep.sum() - 1
    assert chi2 < df + 6 * np.sqrt(2 * df), (chi2, df)  # ~1e-4 false alarm rate; deterministic keys anyway


def test_sampled_generate_is_reproducible(vx, prompt):
    ids, pixels = prompt
    kw = dict(ratio=4, max_new_tokens=12, stop_ids=[], do_sample=True, temperature=1.5, top_k=5)
    a, logits = vx.generate(ids, pixels, seed=3, return_logits=True, **kw)
    np.testing.assert_array_equal(vx.generate(ids, pixels, seed=3, **kw), a)
    np.testing.assert_array_equal(vx.generate(ids, pixels, seed=3, chunk=5, **kw), a)  # the key is carried over
    assert not np.array_equal(vx.generate(ids, pixels, seed=4, **kw), a)
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    assert all(t in row for t, row in zip(a, top5))  # every draw is among the top-5 of its own step's logits


def test_cli_stream_writes_the_final_answer(tiny_cfg):
    """infer.py's AnswerStream: chunks written as they arrive add up to exactly decode(ids).strip() + newline."""
    import io

    from vxl_jax.cli.infer_report import AnswerStream
    from vxl_jax.text.tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    rng = np.random.default_rng(5)
    for trial in range(20):
        ids = rng.integers(0, tiny_cfg.lm.vocab_size, int(rng.integers(1, 40)))
        out = io.StringIO()
        stream, early = AnswerStream(tok, out), []
        for start in range(0, len(ids), 4):
            stream(ids[start:start + 4])
            early.append(out.getvalue())
        answer = tok.decode([int(i) for i in ids], skip_special_tokens=True).strip()
        stream.finish(answer)
        assert out.getvalue() == answer + "\n"
        assert all(answer.startswith(e) for e in early)
        if trial == 0:
            assert len(ids) > 8 and early[-1], "nothing was streamed before the end"
