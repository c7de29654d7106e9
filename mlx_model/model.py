"""A Llama decoder in MLX: RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU (or the switches of
core/architecture.py: QK-norm, ReLU², logit soft-capping).

Line-for-line twin of torch_model/model.py (same classes, attributes and order; `diff` shows only
idiom). Parameter names are Hugging Face Llama names, so the flattened parameters are an HF state
dict. `mx.fast` kernels compute norms, RoPE and softmax in fp32 whatever the weight dtype.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from tinyllama.core.config import ModelConfig, TrainingConfig
from tinyllama.mlx_model.cache import KVCache
from tinyllama.mlx_model.loss import linear_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        # mx.fast.rms_norm accumulates in fp32
        return mx.fast.rms_norm(x, self.weight, self.eps)


class RoPE(nn.Module):
    """Rotate-half rotary embedding (HF / `traditional=False`) via mx.fast.rope, in fp32."""

    def __init__(self, head_dim: int, base: float, max_seq_len: int):
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.max_seq_len = max_seq_len

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        T = x.shape[-2]  # x: (B, H, T, hd); an offset (B,): rows at different positions (mlx_model/batch.py)
        if isinstance(offset, int) and offset + T > self.max_seq_len:
            raise ValueError(f"sequence position {offset + T} exceeds max_seq_len {self.max_seq_len}")
        return mx.fast.rope(x, self.head_dim, traditional=False, base=self.base, scale=1.0, offset=offset)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.resolved_head_dim
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.rope = RoPE(self.head_dim, cfg.rope_theta, cfg.max_seq_len)

    def __call__(self, x: mx.array, cache: KVCache | None = None, mask: mx.array | None = None) -> mx.array:
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        k = self.k_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)  # (B, KV, T, hd)
        v = self.v_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)  # (B, KV, T, hd)
        if self.q_norm is not None:  # QK-norm: each head's queries and keys at unit RMS before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, KV, S, hd), S = offset + T
            mask = cache.mask if mask is None else mask  # rows of different lengths: each sees its own keys
        out = attend(q, k, v, self.scale, mask)  # (B, H, T, hd)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))


def attend(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """Causal SDPA; MLX's "causal" mask is aligned bottom-right and takes GQA's fewer KV heads as is. Or
    with `mask` (B, 1, T, T) bool, packed rows' block-causal mask (segment_mask); or, for one query, (B, 1, 1, S):
    the keys each row of a serving batch holds (mlx_model/batch.py)."""
    if mask is None:
        mask = "causal" if q.shape[2] > 1 else None
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


def segment_mask(segments: mx.array) -> mx.array:
    """(B, T) segment ids -> (B, 1, T, T) bool: causal, and only within a segment (RoPE is relative, so a
    packed conversation computes what it would alone)."""
    T = segments.shape[1]
    causal = mx.tril(mx.ones((T, T), dtype=mx.bool_))
    return (segments[:, None, :, None] == segments[:, None, None, :]) & causal  # (B, 1, T, T)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False) if cfg.mlp == "swiglu" else None
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        if self.gate_proj is None:
            return self.down_proj(mx.square(nn.relu(self.up_proj(x))))  # ReLU²
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def __call__(self, x: mx.array, cache: KVCache | None = None, mask: mx.array | None = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), cache, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = [TransformerBlock(cfg) for _ in range(cfg.n_layers)]
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def __call__(
        self, tokens: mx.array, cache: list[KVCache] | None = None, segments: mx.array | None = None
    ) -> mx.array:
        h = self.embed_tokens(tokens)  # (B, T, d_model)
        mask = segment_mask(segments) if segments is not None else None  # (B, 1, T, T) for packed rows
        for i, layer in enumerate(self.layers):
            h = layer(h, cache[i] if cache is not None else None, mask)
        return self.norm(h)


class Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.logit_transform = self.soft_cap if cfg.logit_softcap else None  # on raw logits, in generation and loss

    @property
    def head_layer(self) -> nn.Module:
        """The output projection's layer: the token embedding when tied (its weight is (vocab, d_model))."""
        return self.model.embed_tokens if self.cfg.tie_embeddings else self.lm_head

    def logits(self, h: mx.array) -> mx.array:
        """(..., d_model) final hidden states -> (..., vocab) logits: h @ head.T, through the layer so that an
        MLX-quantized head (inference only) runs too."""
        logits = self.head_layer.as_linear(h) if self.cfg.tie_embeddings else self.head_layer(h)
        return self.logit_transform(logits) if self.logit_transform is not None else logits

    def soft_cap(self, logits: mx.array) -> mx.array:
        """Tanh soft-capping: every logit smoothly within +-logit_softcap, in fp32."""
        cap = self.cfg.logit_softcap
        return cap * mx.tanh(logits.astype(mx.float32) / cap)

    def __call__(
        self,
        tokens: mx.array,
        cache: list[KVCache] | None = None,
        targets: mx.array | None = None,
        segments: mx.array | None = None,
        denominator: mx.array | None = None,
        training: TrainingConfig | None = None,
    ) -> mx.array:
        """Logits (B, T, vocab); with `targets` (B, T), the next-token loss instead: mean over targets >= 0, or
        their sum / `denominator`, plus the run's own loss terms when `training` is given (the trainers' step;
        evaluation leaves it out). `segments` (B, T): packed rows, attention only within a segment."""
        h = self.model(tokens, cache, segments)  # (B, T, d_model)
        if targets is not None:
            head = self.head_layer.weight  # (vocab, d); one exp per logit, the gradient made in the forward
            return linear_cross_entropy(h, head, targets, denominator, self.logit_transform, training)
        return self.logits(h)  # (B, T, vocab)

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.model.layers]
