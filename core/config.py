"""The run configuration: plain dataclasses, YAML in, typed CLI overrides, checked once.

Precedence is dataclass defaults < YAML file < CLI overrides (`--training.lr 1e-3`).
Nothing here imports mlx or torch, so every script and test can read a config cheaply.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tinyllama.core.cli import UserError
from tinyllama.core.text import read_text


class ConfigError(UserError):
    """A config problem, phrased as one line that names the key and the fix."""


def opt(default: Any, meaning: str) -> Any:
    """A config field with its one-line meaning, which `--help` and docs/configuration.md show."""
    return field(default=default, metadata={"help": meaning})


@dataclass
class ModelConfig:
    vocab_size: int = opt(50257, "tokenizer vocabulary size (rows of the embedding); must cover the tokenizer")
    n_layers: int = opt(6, "transformer blocks")
    d_model: int = opt(384, "hidden size")
    n_heads: int = opt(6, "query heads")
    n_kv_heads: int = opt(2, "key/value heads (grouped-query attention); divides n_heads")
    d_ff: int = opt(1024, "the MLP's hidden size")
    head_dim: int = opt(0, "per-head size; 0 = d_model / n_heads (imported models may differ)")
    rope_theta: float = opt(10000.0, "RoPE base frequency")
    norm_eps: float = opt(1e-5, "RMSNorm epsilon")
    max_seq_len: int = opt(1024, "longest context the model is built for (RoPE table, generation limit)")
    tie_embeddings: bool = opt(True, "share the token embedding with the output head")
    init_std: float = opt(0.02, "standard deviation of the initial weights")
    zero_init_residual: bool = opt(
        False, "start the projections back into the residual stream (o_proj, down_proj) at zero (modded-nanogpt)"
    )
    qk_norm: bool = opt(False, "RMSNorm of each head's queries and keys before RoPE (Qwen3, OLMo 2); exported as qwen3")
    mlp: str = opt(
        "swiglu",
        "swiglu (silu(gate) * up, three matrices) | relu2 (relu(up)^2, two matrices: nanochat, modded-nanogpt; give "
        "it 1.5x the d_ff for equal parameters; no other tool runs it)",
    )
    logit_softcap: float = opt(
        0.0, "> 0: logits = c * tanh(logits / c) (Gemma 2, nanochat) in training and generation; 0 = off; ours only"
    )

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


@dataclass
class TrainingConfig:
    seq_len: int = opt(256, "tokens per training window")
    batch_size: int = opt(16, "windows per micro-batch (per process)")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    max_steps: int = opt(2000, "optimizer steps to train")
    max_tokens: int = opt(0, "> 0: train this many tokens instead (steps = ceil(max_tokens / tokens per step))")
    time_budget: float = opt(
        0.0,
        "> 0: minutes from the first step to the final eval; the first steps time this machine, then max_steps is "
        "fixed to fit and written to the run's config (a resume keeps it)",
    )
    lr: float = opt(1e-3, "peak learning rate (after warmup)")
    min_lr: float = opt(1e-4, "learning rate at the end of the decay (cosine or wsd)")
    warmup_steps: int = opt(100, "steps of linear warmup from 0 to lr")
    schedule: str = opt(
        "cosine", "cosine (warmup, cosine decay to min_lr) | wsd (warmup, stable at lr, linear decay to min_lr)"
    )
    decay_fraction: float = opt(0.2, "wsd: share of the steps, at the end, that decay linearly to min_lr; in [0, 1]")
    weight_decay: float = opt(0.1, "AdamW weight decay on matrices (not on norms)")
    optimizer: str = opt(
        "adamw", "adamw | muon: Muon for the 2-D weights inside the blocks, AdamW for embeddings, head and norms"
    )
    muon_lr: float = opt(0.02, "muon: peak learning rate of the Muon weights (follows lr's schedule)")
    muon_momentum: float = opt(0.95, "muon: momentum of the Muon weights (Nesterov), in [0, 1)")
    muon_weight_decay: float = opt(0.0, "muon: decoupled weight decay of the Muon weights (times muon lr)")
    muon_precision: str = opt(
        "float32",
        "muon: dtype of the Newton-Schulz matmuls: float32 (the same update on MLX and torch to 1e-5) | bfloat16 "
        "(as torch.optim.Muon; faster where bf16 matmuls are: GPUs, AMX CPUs; far slower on a CPU without them, "
        "which the trainers warn about)",
    )
    betas: tuple[float, float] = opt((0.9, 0.95), "AdamW betas, as `0.9,0.95` on the command line")
    eps: float = opt(1e-8, "AdamW epsilon")
    grad_clip: float = opt(1.0, "global gradient-norm clip; 0 = off")
    dtype: str = opt(
        "float32", "weights and compute: float32 (fp32, f32) | bfloat16 (bf16); norms, softmax, loss stay fp32"
    )
    seed: int = opt(1337, "seed of the initial weights and of the data order")
    eval_every: int = opt(200, "steps between validation losses (and a text sample)")
    eval_batches: int = opt(20, "validation batches per evaluation")
    save_every: int = opt(500, "steps between checkpoints (a final one is always written)")
    keep_last: int = opt(3, "newest step checkpoints kept (older ones are deleted; final.ckpt always stays)")
    compile: bool = opt(True, "compile the step (mx.compile; torch.compile on CUDA only)")
    log_every: int = opt(10, "steps between log lines and metrics.jsonl records")
    on_nonfinite: str = opt(
        "stop", "a NaN/inf loss, gradient or weight: stop (exit 2; earlier checkpoints stay) | skip (undo that step)"
    )
    sample_prompt: str = opt("The history of", "prompt of the text sample printed at each evaluation and at the end")
    sample_tokens: int = opt(48, "tokens generated for that sample")
    z_loss: float = opt(0.0, "> 0: add z_loss * log(Z)^2 per token to the training loss (PaLM; e.g. 1e-4); 0 = off")
    init_from: str = opt("", "a checkpoint directory whose weights start a new run (fine-tuning)")


@dataclass
class DataConfig:
    dataset: str = opt(
        "builtin",
        "builtin (Wikipedia) | builtin-shakespeare | builtin-chat | a text file or glob | .jsonl | .parquet | a saved "
        "dataset | a Hugging Face dataset name",
    )
    tokenizer: str = opt(
        "gpt2", "gpt2 | a Hugging Face tokenizer name or directory | tokenizer.json | bpe:<vocab size>"
    )
    val_fraction: float = opt(
        0.02, "share of the text held out for validation (whole documents, by UTF-8 bytes), in (0, 1)"
    )
    text_field: str = opt("text", "the text column of .jsonl / .parquet / Hugging Face datasets")
    dataset_config: str = opt("", "Hugging Face dataset config name (e.g. wikitext-103-raw-v1)")
    split: str = opt("train", "Hugging Face dataset split to read")
    streaming: bool = opt(False, "stream a Hugging Face dataset instead of downloading it whole")
    max_documents: int = opt(0, "read only the first N documents; 0 = all")
    cache_dir: str = opt("data_cache", "where prepared token files are cached")
    num_workers: int = opt(0, "tokenizer threads; 0 = one per CPU core")
    shard_tokens: int = opt(100_000_000, "tokens per prepared shard file (a killed prepare resumes at the next shard)")
    fast_gpt2: bool = opt(True, "encode GPT-2 with tiktoken (the same ids, faster per core) when it is installed")
    encoding_errors: str = opt("strict", "undecodable bytes in text files: strict (refuse, naming the file) | replace")
    prepare: str = opt(
        "full",
        "full: tokenize everything before step 0 | ahead: train as shards appear (a background process tokenizes on)",
    )
    format: str = opt(
        "auto",
        "auto | text | chat ({messages: [{role, content}]}) | completions ({prompt, completion}); auto: by fields",
    )
    mask_prompt: bool = opt(True, "chat / completions: learn only the assistant's tokens (the loss skips the prompt)")
    chat_template: str = opt(
        "", "chat / completions: a jinja2 chat template or a .jinja file; '' = the tokenizer's or ours"
    )


@dataclass
class HardwareConfig:
    accelerator: str = opt("auto", "auto | mlx | cuda (gpu) | mps | cpu; auto = MLX on Apple Silicon, else torch")
    devices: int = opt(0, "processes to train with: 0 = as launched; N > 1 makes train.py launch N itself")
    attention: str = opt("sdpa", "sdpa (torch/MLX fused attention) | flash_attn (the flash-attn package, CUDA)")
    distributed: str = opt("none", "none | ddp | fsdp (torch); MLX averages gradients over mlx.launch processes")
    activation_checkpointing: bool = opt(False, "recompute activations in the backward pass to save memory (torch)")


@dataclass
class OutputConfig:
    dir: str = opt("checkpoints", "where checkpoints go (*.ckpt directories, `latest` pointer)")
    logs: str = opt("logs", "where logs go: <logs>/<run_name>/metrics.jsonl and loss.png")
    run_name: str = opt("", "a plain name for the logs folder; empty = the config file's name")
    overwrite: bool = opt(False, "a new run may replace a finished run in output.dir (else it refuses)")
    report_to: str = opt("none", "none | tensorboard | wandb: also log the metrics there (the `logging` extra)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["training"]["betas"] = list(self.training.betas)
        return out


SECTIONS: dict[str, type] = typing.get_type_hints(Config)
CHOICES = {
    "model.mlp": ("swiglu", "relu2"),
    "training.dtype": ("float32", "bfloat16"),
    "training.on_nonfinite": ("stop", "skip"),
    "training.schedule": ("cosine", "wsd"),
    "training.optimizer": ("adamw", "muon"),
    "training.muon_precision": ("float32", "bfloat16"),
    "data.encoding_errors": ("strict", "replace"),
    "data.format": ("auto", "text", "chat", "completions"),
    "data.prepare": ("full", "ahead"),
    "hardware.accelerator": ("auto", "mlx", "cuda", "mps", "cpu"),
    "hardware.attention": ("sdpa", "flash_attn"),
    "hardware.distributed": ("none", "ddp", "fsdp"),
    "output.report_to": ("none", "tensorboard", "wandb"),
}
ALIASES = {
    "hardware.accelerator": {"gpu": "cuda"},
    "training.dtype": {"fp32": "float32", "f32": "float32", "bf16": "bfloat16"},
}


def _closest(name: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or say why not."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        n = len(typing.get_args(hint))
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ConfigError(f"{key}: expected {n} comma-separated numbers, got {value!r}")
        return tuple(_coerce(key, v, typing.get_args(hint)[i]) for i, v in enumerate(value))
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                number = float(value)  # allows 1e6 and 2_000
                if not number.is_integer():
                    raise ValueError
                return int(number)
            if not isinstance(value, int):
                raise ValueError
            return value
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if value is None:
                return ""
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{key}: expected {name}, got {value!r}") from None
    return value


def coerce_model_key(name: str, value: Any) -> Any:
    """A value for ModelConfig's field `name` (e.g. read from a config.json), typed as the YAML's would be."""
    return _coerce(f"model.{name}", value, typing.get_type_hints(ModelConfig)[name])


def _apply(config: Config, key: str, value: Any) -> None:
    section_name, _, field_name = key.partition(".")
    if section_name not in SECTIONS:
        raise ConfigError(f"unknown config section '{section_name}'{_closest(section_name, SECTIONS)}")
    section = getattr(config, section_name)
    hints = typing.get_type_hints(type(section))
    if field_name not in hints:
        options = [f"{section_name}.{n}" for n in hints]
        raise ConfigError(f"unknown config key '{key}'{_closest(key, options)}")
    value = _coerce(key, value, hints[field_name])
    if isinstance(value, str):
        value = ALIASES.get(key, {}).get(value.lower(), value)
    setattr(section, field_name, value)


def config_from_dict(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    config = Config()
    for section_name, values in (raw or {}).items():
        if section_name not in SECTIONS:
            raise ConfigError(f"unknown config section '{section_name}'{_closest(section_name, SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section_name}' must be a mapping of keys to values")
        for name, value in values.items():
            _apply(config, f"{section_name}.{name}", value)
    for key, value in (overrides or {}).items():
        _apply(config, key, value)
    validate(config)
    return config


BUNDLED = Path(__file__).resolve().parent.parent  # the repository root in a clone, tinyllama/ when installed


def find_config(path: str | Path) -> Path:
    """The YAML file that --config names: the path as given, else the config of that name that comes
    with the code (config.yaml, configs/smoke.yaml, or just `smoke`), so the installed commands work
    from any directory."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    for bundled in (BUNDLED / path, BUNDLED / "configs" / path, BUNDLED / "configs" / f"{path}.yaml"):
        if bundled.is_file():
            print(f"config: {path} is not here; using the bundled {bundled}", file=sys.stderr)
            return bundled
    return path


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or only defaults when path is None), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = find_config(path)
        if not path.is_file():
            bundled = ", ".join(sorted(p.stem for p in (BUNDLED / "configs").glob("*.yaml")))
            raise ConfigError(
                f"config file not found: {path} (pass an existing YAML file, config.yaml, or a bundled name: {bundled})"
            )
        try:
            raw = yaml.safe_load(read_text(path, "config file")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}; fix the syntax there") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, training, ...)")
    config = config_from_dict(raw, overrides)
    if not config.output.run_name:
        config.output.run_name = path.stem if path is not None else "run"
    return config


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


MAX_POSITIONS = 1 << 20  # a bound on max_seq_len: torch's RoPE tables are max_seq_len x head_dim


def _section_name(section: Any) -> str:
    return next(name for name, cls in SECTIONS.items() if isinstance(section, cls))


def validate_model(m: ModelConfig) -> None:
    """The model's own invariants (also applied to every imported or loaded config.json)."""
    for key in ("vocab_size", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
        _require(getattr(m, key) > 0, f"model.{key} must be a positive integer, got {getattr(m, key)}")
    _require(m.head_dim >= 0, f"model.head_dim must be >= 0 (0 means d_model // n_heads), got {m.head_dim}")
    if m.head_dim == 0:
        _require(
            m.d_model % m.n_heads == 0,
            f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads}); "
            f"pick n_heads dividing d_model or set model.head_dim",
        )
    _require(
        m.n_heads % m.n_kv_heads == 0,
        f"model.n_heads ({m.n_heads}) must be a multiple of model.n_kv_heads ({m.n_kv_heads}); "
        f"choose n_kv_heads dividing n_heads",
    )
    _require(
        m.resolved_head_dim % 2 == 0,
        f"head dim ({m.resolved_head_dim}) must be even for RoPE; change model.d_model or model.n_heads",
    )
    _require(math.isfinite(m.rope_theta) and m.rope_theta > 0, f"model.rope_theta must be > 0, got {m.rope_theta}")
    _require(0 < m.norm_eps < 1, f"model.norm_eps must be in (0, 1), got {m.norm_eps}")
    _require(math.isfinite(m.init_std) and m.init_std > 0, f"model.init_std must be > 0, got {m.init_std}")
    _require(m.logit_softcap >= 0, f"model.logit_softcap must be >= 0 (0 = off), got {m.logit_softcap}")
    _require(
        m.max_seq_len <= MAX_POSITIONS,
        f"model.max_seq_len {m.max_seq_len} is beyond the {MAX_POSITIONS:,} positions supported; lower it",
    )
    for key, options in CHOICES.items():
        if key.startswith("model."):
            value = getattr(m, key.removeprefix("model."))
            _require(value in options, f"{key} must be one of {', '.join(options)}; got '{value}'")


def validate(config: Config) -> None:
    """Check every invariant once, at load, so a bad run fails before it allocates anything."""
    m, t, d, h = config.model, config.training, config.data, config.hardware
    for section in (m, t, d):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            values = value if isinstance(value, tuple) else (value,)
            _require(
                all(not isinstance(v, float) or math.isfinite(v) for v in values),
                f"{_section_name(section)}.{f.name} must be a finite number, got {value}",
            )
    validate_model(m)
    for key in ("seq_len", "batch_size", "grad_accum", "eval_batches", "keep_last", "log_every"):
        _require(getattr(t, key) > 0, f"training.{key} must be a positive integer, got {getattr(t, key)}")
    for key in ("max_steps", "max_tokens", "warmup_steps", "eval_every", "save_every", "sample_tokens"):
        _require(getattr(t, key) >= 0, f"training.{key} must be >= 0, got {getattr(t, key)}")
    _require(
        t.seq_len <= m.max_seq_len,
        f"training.seq_len ({t.seq_len}) exceeds model.max_seq_len ({m.max_seq_len}); "
        f"lower seq_len or raise max_seq_len",
    )
    _require(t.max_steps > 0 or t.max_tokens > 0, "set training.max_steps or training.max_tokens to a positive number")
    _require(t.time_budget >= 0, f"training.time_budget must be >= 0 minutes (0 = off), got {t.time_budget}")
    if t.time_budget > 0:
        _require(t.max_tokens == 0, "training.time_budget and training.max_tokens both set the length; keep one")
        _require(
            t.warmup_steps >= 2,
            f"training.time_budget times the first steps inside the warm-up; set training.warmup_steps >= 2 (got "
            f"{t.warmup_steps})",
        )
    _require(t.lr > 0, f"training.lr must be > 0, got {t.lr}")
    _require(0 <= t.min_lr <= t.lr, f"training.min_lr ({t.min_lr}) must be between 0 and training.lr ({t.lr})")
    _require(all(0 <= b < 1 for b in t.betas), f"training.betas must each be in [0, 1), got {list(t.betas)}")
    _require(t.eps > 0, f"training.eps must be > 0, got {t.eps}")
    _require(t.weight_decay >= 0, f"training.weight_decay must be >= 0, got {t.weight_decay}")
    _require(t.z_loss >= 0, f"training.z_loss must be >= 0 (0 = off), got {t.z_loss}")
    _require(t.grad_clip >= 0, f"training.grad_clip must be >= 0 (0 disables), got {t.grad_clip}")
    _require(0 <= t.decay_fraction <= 1, f"training.decay_fraction must be in [0, 1], got {t.decay_fraction}")
    _require(t.muon_lr > 0, f"training.muon_lr must be > 0, got {t.muon_lr}")
    _require(0 <= t.muon_momentum < 1, f"training.muon_momentum must be in [0, 1), got {t.muon_momentum}")
    _require(t.muon_weight_decay >= 0, f"training.muon_weight_decay must be >= 0, got {t.muon_weight_decay}")
    _require(
        not (t.optimizer == "muon" and h.distributed == "fsdp"),
        "training.optimizer muon needs whole matrices, which hardware.distributed fsdp shards; use ddp (or adamw)",
    )
    _require(0 < d.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    _require(d.max_documents >= 0, f"data.max_documents must be >= 0 (0: all), got {d.max_documents}")
    _require(d.num_workers >= 0, f"data.num_workers must be >= 0 (0: one per core), got {d.num_workers}")
    _require(h.devices >= 0, f"hardware.devices must be >= 0 (0: as launched), got {h.devices}")
    name = config.output.run_name
    _require(
        name not in (".", "..") and not any(c in name for c in "/\\") and not name.startswith("~"),
        f"output.run_name '{name}' must be a plain name (no '/', '..' or absolute path): logs go to "
        f"output.logs/<run_name>; set output.logs to choose the directory",
    )
    for key, options in CHOICES.items():
        section, _, name = key.partition(".")
        value = getattr(getattr(config, section), name)
        _require(value in options, f"{key} must be one of {', '.join(options)}; got '{value}'")


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Parse `--section.key value` / `--section.key=value` pairs (a bare boolean key, `--training.compile`,
    means true); values stay strings until typed."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(f"unexpected argument '{arg}'; overrides look like --training.lr 3e-4")
        key, eq, value = arg[2:].partition("=")
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section '{section}'{_closest(section, SECTIONS)}")
        hints = typing.get_type_hints(SECTIONS[section])
        if name not in hints:
            raise ConfigError(f"unknown config key '{key}'{_closest(key, [f'{section}.{n}' for n in hints])}")
        if not eq:
            bare = i + 1 >= len(args) or args[i + 1].startswith("--")
            if bare and hints[name] is bool:
                value = "true"
            elif bare:
                raise ConfigError(f"--{key} needs a value, e.g. --{key} <value>")
            else:
                value = args[i + 1]
                i += 1
        overrides[key] = value
        i += 1
    return overrides
