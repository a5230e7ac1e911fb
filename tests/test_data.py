"""Training data pipeline: 1-fps frame sampling read back from real (PyAV-written) videos, the ChatML
label mask against a hand-built expectation, bad records skipped and counted, resumable order."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from vxl_jax.data.conversation import IGNORE_INDEX, RecordError, tokenize_conversation
from vxl_jax.data.frames import load_training_video
from vxl_jax.data.pipeline import SampleSpec, TrainLoader
from vxl_jax.data.records import load_records
from vxl_jax.media.preprocess import normalize_frames, preprocess_frames, resize_crop_frames
from vxl_jax.text.tokenizer import build_tiny_tokenizer
from vxl_jax.media.video import VideoError, read_counter, sample_indices, write_sample_video

X = IGNORE_INDEX


def test_frame_indices_hand_computed():
    # 48 frames at 4 fps: every 4th frame (1 fps) -> 12 frames; under a cap of 12 they are kept
    assert sample_indices(48, 4.0, fps=1.0, max_frames=12).tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44]
    # above the cap: linspace(0, 47, 8) truncated
    assert sample_indices(48, 4.0, fps=1.0, max_frames=8).tolist() == [0, 6, 13, 20, 26, 33, 40, 47]
    # 30 fps -> step 30; 25 fps with video_fps 2 -> step round(12.5) = 12
    assert sample_indices(100, 30.0, fps=1.0, max_frames=10).tolist() == [0, 30, 60, 90]
    assert sample_indices(40, 25.0, fps=2.0, max_frames=10).tolist() == [0, 12, 24, 36]
    with pytest.raises(VideoError):
        sample_indices(0, 4.0, fps=1.0, max_frames=8)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    write_sample_video(d / "a.mp4", num_frames=48, size=(192, 96), fps=4)   # 12 s
    write_sample_video(d / "b.mp4", num_frames=20, size=(192, 96), fps=4)   # 5 s
    (d / "corrupt.mp4").write_bytes(os.urandom(4096))
    return d


def test_decoded_frames_are_the_sampled_indices(video_dir):
    frames, idx = load_training_video(video_dir / "a.mp4", frames_upbound=8)
    assert idx.tolist() == [0, 6, 13, 20, 26, 33, 40, 47]
    assert [read_counter(f) for f in frames] == idx.tolist()
    frames, idx = load_training_video(video_dir / "b.mp4", frames_upbound=8)
    assert [read_counter(f) for f in frames] == [0, 4, 8, 12, 16]
    with pytest.raises(VideoError, match="corrupt.mp4"):
        load_training_video(video_dir / "corrupt.mp4", 8)


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_label_mask_hand_built():
    tok = build_tiny_tokenizer()
    S, E, NL = 3, 2, enc(tok, "\n")
    assert NL == [14]
    conv = [{"from": "human", "value": "What colour?\n<image>"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]
    t = tokenize_conversation(conv, tok, has_visual=True)
    sys_, q, q2 = enc(tok, "You are a helpful assistant."), enc(tok, "\nWhat colour?"), enc(tok, "Sure?")
    red, yes = enc(tok, "red"), enc(tok, "yes")
    sysr, userr, asr = enc(tok, "system\n"), enc(tok, "user\n"), enc(tok, "assistant\n")
    # unshifted targets: <|im_start|>, <|im_end|>, "\n" kept in every turn; roles and non-assistant text ignored
    prefix = [S] + sysr + sys_ + [E] + NL + [S] + userr
    prefix_t = [S] + [X] * len(sysr) + [X] * len(sys_) + [E] + NL + [S] + [X] * len(userr)
    suffix = q + [E] + NL + [S] + asr + red + [E] + NL + [S] + userr + q2 + [E] + NL + [S] + asr + yes + [E] + NL
    suffix_t = ([X] * len(q) + [E] + NL + [S] + [X] * len(asr) + red + [E] + NL + [S] + [X] * len(userr)
                + [X] * len(q2) + [E] + NL + [S] + [X] * len(asr) + yes + [E] + NL)
    assert t.prefix_ids.tolist() == prefix and t.suffix_ids.tolist() == suffix
    assert t.prefix_labels.tolist() == prefix_t[1:] + [X]      # last prefix position: a visual token follows
    assert t.suffix_labels.tolist() == suffix_t[1:] + [X]
    # the answer "red" is predicted from the position before it
    i = suffix.index(red[0], len(q))
    assert t.suffix_labels[i - 1] == red[0]

    text = tokenize_conversation([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "yes"}], tok, False)
    assert len(text.prefix_ids) == 0 and text.suffix_ids[0] == S and not text.has_visual
    with pytest.raises(RecordError, match="placeholder"):
        tokenize_conversation([{"from": "human", "value": "<image> x"}, {"from": "gpt", "value": "y"}], tok, False)
    with pytest.raises(RecordError, match="no conversations"):
        tokenize_conversation([], tok, True)


def _qa(rid, video=None, q="What happens?", a="red"):
    r = {"id": rid, "conversations": [{"from": "human", "value": ("<image>\n" if video else "") + q},
                                      {"from": "gpt", "value": a}]}
    if video:
        r["video"] = video
    return r


def test_loader_skips_and_counts_bad_records(video_dir, tmp_path, caplog):
    recs = [_qa("good-a", "a.mp4"), _qa("missing", "nope.mp4"), _qa("good-b", "b.mp4"), _qa("corrupt", "corrupt.mp4"),
            {"id": "noconv", "video": "a.mp4"}, _qa("text", None)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n{not json\n")
    records, skipped = load_records(path)
    assert sorted(s.id for s in skipped) == ["noconv", "train.jsonl:7"]
    spec = SampleSpec(max_prefix=32, max_suffix=48, frames_upbound=8, image_size=56, video_folder=str(video_dir))
    loader = TrainLoader(records, spec, batch_size=3, accum=1, seed=0, shuffle=False, num_epochs=1,
                         skipped_at_load=len(skipped))
    with caplog.at_level("WARNING"):
        batch = next(loader)
    assert loader.skipped == 4 and sorted(loader.recent_skips) == ["corrupt", "missing"]
    assert "missing" in caplog.text and "corrupt" in caplog.text
    assert batch["pixels"].shape == (1, 3, 8, 56, 56, 3) and batch["pixels"].dtype == np.uint8
    assert batch["num_frames"].tolist() == [[8, 5, 0]]                 # a (capped), b (5 s at 1 fps), text-only
    assert batch["prefix_len"][0, 2] == 0 and batch["prefix_len"][0, 0] > 0
    assert np.all(batch["pixels"][0, 1, 5:] == 0) and np.any(batch["pixels"][0, 1, :5] != 0)
    # uint8 resized + cropped frames; normalized on the device they equal the host CLIP preprocessing
    frames, _ = load_training_video(video_dir / "b.mp4", frames_upbound=8)
    np.testing.assert_array_equal(batch["pixels"][0, 1, :5], resize_crop_frames(frames, 56))
    np.testing.assert_array_equal(np.asarray(normalize_frames(jnp.asarray(batch["pixels"][0, 1, :5]))),
                                  preprocess_frames(frames, 56))
    pl = batch["prefix_labels"][0, 0]
    assert np.all(pl[batch["prefix_len"][0, 0] - 1:] == X)              # last prefix label and padding ignored
    sl = batch["suffix_labels"][0, 0]
    assert np.all(sl[batch["suffix_len"][0, 0] - 1:] == X)
    with pytest.raises(StopIteration):
        next(loader)


def test_loader_order_is_seeded_and_resumable(video_dir):
    records = [_qa(f"t{i}", None, q=f"Question {i}?", a="yes" if i % 2 else "no") for i in range(7)]
    spec = SampleSpec(max_prefix=8, max_suffix=48, frames_upbound=2, image_size=56)

    def run(state=None, n=4):
        ld = TrainLoader(records, spec, batch_size=2, accum=2, seed=5)
        if state:
            ld.set_state(state)
        return [next(ld)["suffix_ids"] for _ in range(n)], ld

    full, _ = run()
    again, _ = run()
    assert all(np.array_equal(a, b) for a, b in zip(full, again))
    first, ld = run(n=2)
    rest, _ = run(state=json.loads(json.dumps(ld.get_state())), n=2)
    assert all(np.array_equal(a, b) for a, b in zip(full[2:], rest))
    assert full[0].shape == (2, 2, 48)
    other = TrainLoader(records, spec, batch_size=2, accum=2, seed=6)
    assert not all(np.array_equal(a, next(other)["suffix_ids"]) for a in full)
