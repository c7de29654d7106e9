"""A Llama decoder in PyTorch: RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU (or the switches of
core/architecture.py: QK-norm, ReLU², logit soft-capping).

Line-for-line twin of mlx_model/model.py (same classes, attributes and order; `diff` shows only
idiom). Parameter names are Hugging Face Llama names, so `state_dict()` is an HF state dict; what the model
holds is declared once in core/architecture.py. Norms, softmax and RoPE run in fp32 whatever the weight dtype.
One idiom is torch's alone: an inference model may lay its q/k/v and gate/up weights out as one tensor per
group (`fuse_projections`), since eager torch pays per call and a one-token decode step is mostly calls;
MLX builds a lazy graph and needs no such layout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyllama.core.config import ModelConfig, TrainingConfig
from tinyllama.torch_model.cache import KVCache
from tinyllama.torch_model.loss import linear_cross_entropy


class Leaf(nn.Module):
    """A module called straight through to its forward: no hook bookkeeping (none is ever set on these), which
    at one token a step costs as much as the arithmetic of a small layer."""

    def __call__(self, *args):
        return self.forward(*args)


class Linear(nn.Linear):
    """Bias-free, no random init: every weight is loaded (core.architecture's init or a checkpoint)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__(d_in, d_out, bias=False)

    def reset_parameters(self) -> None:  # a random init overwritten at once only slows start-up
        pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # as Leaf: no hook bookkeeping
        return F.linear(x, self.weight)


class Embedding(nn.Embedding):
    reset_parameters = Linear.reset_parameters


class RMSNorm(Leaf):
    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dims))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # one call; the general form below to fp32 rounding
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # normalise in fp32, scale in the weight dtype (as HF's LlamaRMSNorm)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(self.weight.dtype)


class RoPE(Leaf):
    """Rotate-half rotary embedding (HF / `traditional=False`), cos/sin tables in fp32."""

    def __init__(self, head_dim: int, base: float, max_seq_len: int):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (S, hd/2)
        angles = torch.cat([angles, angles], dim=-1)  # (S, hd)
        sin = angles.sin()
        sin[:, : head_dim // 2] *= -1  # rotate_half(x) * sin == x.roll(hd/2) * sin with its first half negated
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", sin.float(), persistent=False)

    def _apply(self, fn, recurse=True):
        # keep the tables in fp32 when the model is cast to bf16; device moves still apply
        cos, sin = self.cos, self.sin
        super()._apply(fn, recurse)
        self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)
        return self

    def forward(self, x: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        T = x.shape[-2]  # x: (B, H, T, hd)
        if isinstance(offset, torch.Tensor):  # (B,) rows at different positions (a serving batch, torch_model/batch.py)
            positions = offset[:, None] + torch.arange(T, device=offset.device)  # (B, T)
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, T, hd)
        else:
            if offset + T > self.cos.shape[0]:
                raise ValueError(f"sequence position {offset + T} exceeds max_seq_len {self.cos.shape[0]}")
            cos, sin = self.cos[offset : offset + T], self.sin[offset : offset + T]  # (T, hd)
        if x.dtype == torch.float32:  # the same computation without two no-op casts (a one-token step is calls)
            return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin  # roll: [x2, x1]
        xf = x.float()
        return (xf * cos + xf.roll(x.shape[-1] // 2, dims=-1) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.resolved_head_dim
        self.scale = self.head_dim**-0.5
        self.q_proj = Linear(cfg.d_model, self.n_heads * self.head_dim)
        self.k_proj = Linear(cfg.d_model, self.n_kv_heads * self.head_dim)
        self.v_proj = Linear(cfg.d_model, self.n_kv_heads * self.head_dim)
        self.o_proj = Linear(self.n_heads * self.head_dim, cfg.d_model)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.rope = RoPE(self.head_dim, cfg.rope_theta, cfg.max_seq_len)
        self.attend = attend  # swappable kernel (e.g. flash_attn), same signature
        self.qkv = None  # inference layout (fuse_projections): q/k/v_proj's weights as rows of this one tensor
        self.widths = [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim]

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        offset = cache.offset if cache is not None else 0
        if self.qkv is not None and self.q_norm is None:
            # inference layout: one product, RoPE on queries and keys at once (a one-token step is mostly
            # per-call cost); the same math as below
            qkv = F.linear(x, self.qkv).view(B, T, H + 2 * KV, hd).transpose(1, 2)  # (B, H + 2 KV, T, hd)
            qk = self.rope(qkv[:, : H + KV], offset)  # (B, H + KV, T, hd)
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + KV :]
        else:
            if self.qkv is None:
                q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
            else:
                q, k, v = F.linear(x, self.qkv).split(self.widths, dim=-1)
            q = q.view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
            k = k.view(B, T, KV, hd).transpose(1, 2)  # (B, KV, T, hd)
            v = v.view(B, T, KV, hd).transpose(1, 2)  # (B, KV, T, hd)
            if self.q_norm is not None:  # QK-norm: each head's queries and keys at unit RMS before RoPE
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, KV, S, hd), S = offset + T
            mask = cache.mask if mask is None else mask  # rows of different lengths: each sees its own keys
        out = self.attend(q, k, v, self.scale, mask)  # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None):
    """Causal SDPA with the mask aligned bottom-right, so queries at an offset see all past keys; or with
    `mask` (B, 1, T, T) bool, packed rows' block-causal mask (segment_mask); or, for one query, (B, 1, 1, S):
    the keys each row of a serving batch holds (torch_model/batch.py)."""
    T, S = q.shape[2], k.shape[2]
    n_rep = q.shape[1] // k.shape[1]
    if T == 1:  # one query sees every key: no mask; GQA as n_rep queries per KV head, no copy of the cache
        B, H, _, hd = q.shape
        grouped = q.reshape(B, k.shape[1], n_rep, hd)  # (B, KV, n_rep, hd): query head h uses KV head h // n_rep
        return F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=scale).reshape(B, H, 1, hd)
    if n_rep > 1:  # GQA: share each KV head across n_rep query heads (works with every SDPA backend)
        k = k.repeat_interleave(n_rep, dim=1)  # (B, H, S, hd)
        v = v.repeat_interleave(n_rep, dim=1)
    if T == S and mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=scale)
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)  # bottom-right
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids -> (B, 1, T, T) bool: causal, and only within a segment (RoPE is relative, so a
    packed conversation computes what it would alone)."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return (segments[:, None, :, None] == segments[:, None, None, :]) & causal  # (B, 1, T, T)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.d_model, cfg.d_ff) if cfg.mlp == "swiglu" else None
        self.up_proj = Linear(cfg.d_model, cfg.d_ff)
        self.down_proj = Linear(cfg.d_ff, cfg.d_model)
        self.gate_up = None  # inference layout (fuse_projections): gate_proj's and up_proj's weights as one tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            return self.down_proj(F.relu(self.up_proj(x)).square())  # ReLU²
        if self.gate_up is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = F.linear(x, self.gate_up).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)  # SwiGLU


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cache, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(
        self, tokens: torch.Tensor, cache: list[KVCache] | None = None, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
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
            self.lm_head = Linear(cfg.d_model, cfg.vocab_size)
        self.logit_transform = self.soft_cap if cfg.logit_softcap else None  # on raw logits, in generation and loss

    @property
    def head_layer(self) -> nn.Module:
        """The output projection's layer: the token embedding when tied (its weight is (vocab, d_model))."""
        return self.model.embed_tokens if self.cfg.tie_embeddings else self.lm_head

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d_model) final hidden states -> (..., vocab) logits: h @ head.T."""
        logits = F.linear(h, self.head_layer.weight)
        return self.logit_transform(logits) if self.logit_transform is not None else logits

    def soft_cap(self, logits: torch.Tensor) -> torch.Tensor:
        """Tanh soft-capping: every logit smoothly within +-logit_softcap, in fp32."""
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits.float() / cap)

    def forward(
        self,
        tokens: torch.Tensor,
        cache: list[KVCache] | None = None,
        targets: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        denominator: torch.Tensor | None = None,
        training: TrainingConfig | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab); with `targets` (B, T), the next-token loss instead: mean over targets >= 0, or
        their sum / `denominator`, plus the run's own loss terms when `training` is given (the trainers' step;
        evaluation leaves it out). `segments` (B, T): packed rows, attention only within a segment."""
        h = self.model(tokens, cache, segments)  # (B, T, d_model)
        if targets is not None:
            head = self.head_layer.weight  # (vocab, d); never a (B, T, vocab) tensor
            return linear_cross_entropy(h, head, targets, denominator, self.logit_transform, training)
        return self.logits(h)  # (B, T, vocab)

    def make_cache(self) -> list[KVCache]:
        return [KVCache(self.cfg.max_seq_len) for _ in self.model.layers]


def fuse_projections(model: Model) -> Model:
    """Lay an inference model's q/k/v and gate/up weights out as row slices of one tensor per group, so each
    group is one product (Attention.qkv, MLP.gate_up): fewer calls where a step is mostly per-call cost (one
    token at a time on a CPU). The parameters keep their names, shapes and values, and no memory is added;
    each stays in its memory layout (transposed storage included). Never for training: an optimizer would
    step the slices apart."""
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv = _one_tensor([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            if mlp.gate_proj is not None:
                mlp.gate_up = _one_tensor([mlp.gate_proj.weight, mlp.up_proj.weight])
    return model


def _one_tensor(weights: list[nn.Parameter]) -> torch.Tensor:
    """One (sum of out, in) tensor holding `weights` (each (out_i, in)) in their memory layout; each parameter
    becomes a row slice of it."""
    whole = torch.cat([w.detach() for w in weights])  # (sum out, in), row-major
    if weights[0].stride()[0] == 1 and weights[0].shape[0] > 1:  # transposed storage: keep it
        whole = whole.t().contiguous().t()
    start = 0
    for w in weights:
        w.data = whole[start : start + w.shape[0]]
        start += w.shape[0]
    return whole
