"""The one-token decode step of an fp32 inference model, in as few framework calls as it takes.

At batch 1 an eager decode step on the CPU is mostly per-call overhead, not arithmetic: Model.forward
makes ~50 module and tensor calls per layer for one token. `decode_one` computes the same step (the same logits to fp32
rounding: a fused product may round differently from separate ones on some CPUs; tests/test_torch_decode.py)
from the model's own weights with about half as many: q/k/v in one
matrix product and gate/up in another (`fuse_projections` lays each group's weights out as slices of
one buffer, so the parameters keep their HF names and shapes and no memory is added), RoPE on the
queries and keys at once, functional calls instead of module calls. On the dev VM (config.yaml's model,
one thread) a decode step went from ~11 to ~8.7 ms. Prompts (prefill), scoring and training use Model.

fp32 only: there RMSNorm and RoPE are the single calls used below; other dtypes keep Model's path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from tinyllama.torch_model.cache import KVCache
from tinyllama.torch_model.model import Model


class FusedLayer(NamedTuple):
    qkv: torch.Tensor  # (n_heads * hd + 2 * n_kv_heads * hd, d_model): q_proj, k_proj, v_proj are its rows
    gate_up: torch.Tensor  # (2 * d_ff, d_model): gate_proj, up_proj


def fuse(weights: list[torch.nn.Parameter]) -> torch.Tensor:
    """One (sum of out, in) buffer holding `weights` (each (out_i, in)) in their memory layout (plain or
    transposed storage, see generate.transpose_storage); each parameter becomes a row slice of it."""
    whole = torch.cat([w.detach() for w in weights])  # (sum out, in), row-major
    if weights[0].stride()[0] == 1 and weights[0].shape[0] > 1:  # transposed storage: keep it
        whole = whole.t().contiguous().t()
    start = 0
    for w in weights:
        w.data = whole[start : start + w.shape[0]]
        start += w.shape[0]
    return whole


def fuse_projections(model: Model) -> list[FusedLayer] | None:
    """Re-lay an inference model's q/k/v and gate/up weights for `decode_one`; None (nothing changed)
    unless the weights are fp32. Same shapes, values and names; the trainers' models are never passed."""
    if model.model.embed_tokens.weight.dtype != torch.float32:
        return None
    fused = []
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = fuse([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            fused.append(FusedLayer(qkv, fuse([mlp.gate_proj.weight, mlp.up_proj.weight])))
    return fused


def decode_one(model: Model, fused: list[FusedLayer], tokens: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
    """Next-token logits (B, V) after one new token per row, tokens (B, 1); appends to `cache`. Equals
    generate.last_logits(model, tokens, cache) for an fp32 model."""
    cfg, layers = model.cfg, model.model.layers
    H, KV, hd, eps = cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim, cfg.norm_eps
    offset = cache[0].offset
    rope = layers[0].self_attn.rope
    if offset >= rope.cos.shape[0]:
        raise ValueError(f"sequence position {offset + 1} exceeds max_seq_len {rope.cos.shape[0]}")
    cos, sin = rope.cos[offset], rope.sin[offset]  # (hd,): this position's rotation
    h = F.embedding(tokens, model.model.embed_tokens.weight)  # (B, 1, d_model)
    B = h.shape[0]
    for layer, weights, layer_cache in zip(layers, fused, cache, strict=True):
        attn, mlp = layer.self_attn, layer.mlp
        x = F.rms_norm(h, (h.shape[-1],), layer.input_layernorm.weight, eps)
        qkv = F.linear(x, weights.qkv).view(B, H + 2 * KV, hd)  # q heads, then k heads, then v heads
        qk = qkv[:, : H + KV]
        qk = qk * cos + qk.roll(hd // 2, dims=-1) * sin  # RoPE (model.RoPE) on queries and keys together
        k, v = layer_cache.update(qk[:, H:, None], qkv[:, H + KV :, None])  # (B, KV, S, hd)
        q = qk[:, :H].reshape(B, KV, H // KV, hd)  # query head h uses KV head h // (H / KV), as model.attend
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # (B, KV, H / KV, hd)
        h = h + F.linear(out.reshape(B, 1, H * hd), attn.o_proj.weight)
        x = F.rms_norm(h, (h.shape[-1],), layer.post_attention_layernorm.weight, eps)
        gate, up = F.linear(x, weights.gate_up).chunk(2, dim=-1)  # (B, 1, d_ff) each
        h = h + F.linear(F.silu(gate) * up, mlp.down_proj.weight)
    h = F.rms_norm(h[:, -1], (h.shape[-1],), model.model.norm.weight, eps)  # (B, d_model)
    return F.linear(h, model.model.embed_tokens.weight if cfg.tie_embeddings else model.lm_head.weight)
