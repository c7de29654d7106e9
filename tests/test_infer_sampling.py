"""core.sampling: logit processors equal Hugging Face's, the sampler follows the distribution, streaming text."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tinyllama.core.sampling import (
    SamplingParams,
    TextStream,
    apply_repetition_penalty,
    fit_prompt,
    sampling_params,
    select_token,
    top_k_filter,
    top_p_filter,
)


def random_logits(n=300, seed=0):
    return (np.random.default_rng(seed).standard_normal(n) * 3).astype(np.float32)


def test_repetition_penalty_is_the_ctrl_hf_rule():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = random_logits()
    seen = [3, 7, 7, 250, 0, 12, 3]  # duplicates are penalised once
    ours = apply_repetition_penalty(logits, seen, 1.7)
    ref = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([seen]), torch.from_numpy(logits)[None].clone())[0]
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    changed = np.flatnonzero(ours != logits)
    assert set(changed) == set(seen)
    assert all(ours[i] < logits[i] for i in seen)  # positive logits shrink, negative ones grow more negative


@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_keeps_what_hf_keeps(k):
    from transformers.generation.logits_process import TopKLogitsWarper

    logits = random_logits(seed=k)
    ref = TopKLogitsWarper(k)(None, torch.from_numpy(logits)[None].clone())[0].numpy()
    ours = top_k_filter(logits, k)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
    assert np.isfinite(ours).sum() == k


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("n", [300, 5000])
def test_top_p_keeps_what_hf_keeps(p, n):
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = random_logits(n, seed=int(p * 100))
    ref = TopPLogitsWarper(p)(None, torch.from_numpy(logits)[None].clone())[0].numpy()
    ours = top_p_filter(logits, p)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
    assert np.isfinite(ours).sum() >= 1


def test_sampler_follows_the_softmax():
    logits = np.array([2.0, 1.0, 0.5, -1.0, 0.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=1.0)
    draws = np.bincount([select_token(logits, params, rng) for _ in range(20000)], minlength=5) / 20000
    expected = np.exp(logits) / np.exp(logits).sum()
    assert np.abs(draws - expected).max() < 0.015
    cold = SamplingParams(temperature=0.5)
    draws = np.bincount([select_token(logits, cold, rng) for _ in range(5000)], minlength=5) / 5000
    expected = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum()
    assert np.abs(draws - expected).max() < 0.03


def test_greedy_with_penalty_can_change_the_choice():
    logits = np.array([3.0, 2.9, -1.0], dtype=np.float32)
    assert select_token(logits, SamplingParams(), None) == 0
    assert select_token(logits, SamplingParams(repetition_penalty=1.2), None, seen=[0]) == 1


def test_bad_sampling_params_are_refused():
    for kwargs in ({"temperature": -1}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}, {"repetition_penalty": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**kwargs)


@pytest.mark.parametrize("name", ["temperature", "top_p", "repetition_penalty", "min_p"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nan_and_infinities_are_refused_wherever_params_are_made(name, value):
    """NaN passed every range check (NaN < 0 is False) and became NaN logits; inf temperature sampled uniformly."""
    with pytest.raises(ValueError, match=f"^{name} must be a finite number, got {value}$"):
        SamplingParams(**{name: value})
    for raw in (value, str(value)):  # a command line's float, a query string's text
        with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
            sampling_params({name: raw})


def test_the_shared_parser_takes_numbers_and_names_what_it_refuses():
    parsed = sampling_params({"temperature": "0.7", "top_k": 40.0, "top_p": 1, "repetition_penalty": 1.1, "min_p": 0})
    assert parsed == SamplingParams(0.7, 40, 1.0, 1.1, 0.0) and isinstance(parsed.top_k, int)
    for raw, says in (
        ({"temperature": True}, "temperature must be a number, got bool True"),
        ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
        ({"top_k": None}, "top_k must be a number, got NoneType None"),
        ({"top_k": 2.5}, "top_k must be a whole number, got 2.5"),
        ({"temprature": 1}, "unknown sampling parameter 'temprature'"),
        ({"top_p": 2}, "top_p must be in (0, 1], got 2.0"),
    ):
        with pytest.raises(ValueError, match=re.escape(says)):
            sampling_params(raw)


def test_fit_prompt():
    assert fit_prompt([1, 2, 3], 16, 4) == ([1, 2, 3], 4, None)
    ids, n, note = fit_prompt(list(range(20)), 16, 4)
    assert ids == list(range(8, 20)) and n == 4 and "keeping the last 12" in note
    ids, n, note = fit_prompt([1, 2, 3], 16, 40)
    assert ids == [3] and n == 15 and "capped to 15" in note
    with pytest.raises(ValueError, match="empty prompt"):
        fit_prompt([], 16, 4)


def test_text_stream_holds_back_split_characters():
    from tinyllama.data.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    text = " naïve café — 日本語 🙂 done"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens are partial UTF-8 on their own
    prompt = tok.encode("Say:")
    stream = TextStream(tok.decode, prompt)
    deltas = [stream.push(i) for i in ids]
    assert "".join(deltas) + stream.flush() == text
    assert not any("\ufffd" in d for d in deltas)


def test_text_stream_keeps_separators_of_word_tokenizers(tmp_path):
    from helpers import write_word_tokenizer

    from tinyllama.data.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(write_word_tokenizer(tmp_path / "tok", 20))
    stream = TextStream(tok.decode, tok.encode("w3 w4"))
    assert "".join(stream.push(i) for i in tok.encode("w5 w6 w7")) == " w5 w6 w7"


@pytest.mark.parametrize("temperature", [1e-45, 2.2e-309, 1e-30])
@pytest.mark.parametrize("penalty", [1.0, 2.2e-309, 1e-40, 1e300])
def test_vanishing_temperatures_and_extreme_penalties_take_the_limit(temperature, penalty):
    """A finite but tiny temperature (or a penalty that overflows a logit) is the limit of the softmax: the top
    token (ties among the tokens pushed to +inf broken by the draw), never NaN probabilities or a traceback.
    Found by the fuzz tier: `infer.py --repetition-penalty 2.2e-309` ended in a ValueError traceback."""
    logits = np.array([-3.0, 1.5, 2.5, -0.5, 2.4], np.float32)
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=temperature, top_p=0.9, repetition_penalty=penalty)
    picks = {select_token(logits, params, rng, seen=[3, 4]) for _ in range(20)}
    if penalty < 1e-30:  # the seen positive logit (2.4) is divided to +inf: it alone
        assert picks == {4}
    elif penalty > 1e200:  # the seen ones are pushed far down: the unseen top, 2.5
        assert picks == {2}
    else:
        assert picks == {2}
