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


class ConfigError(UserError):
    """A config problem, phrased as one line that names the key and the fix."""


@dataclass
class ModelConfig:
    vocab_size: int = 50257
    n_layers: int = 6
    d_model: int = 384
    n_heads: int = 6
    n_kv_heads: int = 2
    d_ff: int = 1024
    head_dim: int = 0  # 0: d_model // n_heads (imported models may differ)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 1024
    tie_embeddings: bool = True
    init_std: float = 0.02

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


@dataclass
class TrainingConfig:
    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 2000
    max_tokens: int = 0  # > 0 overrides max_steps: steps = ceil(max_tokens / tokens per step)
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    dtype: str = "float32"  # float32 | bfloat16 (weights/compute; norms, softmax, loss stay fp32)
    seed: int = 1337
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 3
    compile: bool = True
    log_every: int = 10
    on_nonfinite: str = "stop"  # stop | skip
    sample_prompt: str = "The history of"
    sample_tokens: int = 48
    init_from: str = ""  # a checkpoint directory whose weights start a new run


@dataclass
class DataConfig:
    dataset: str = "builtin"  # builtin | file/glob | .jsonl | .parquet | a Hugging Face dataset name
    tokenizer: str = "gpt2"  # gpt2 | HF name or path | tokenizer.json | bpe:<vocab size>
    val_fraction: float = 0.02
    text_field: str = "text"
    dataset_config: str = ""  # HF dataset config name (e.g. wikitext-103-raw-v1)
    split: str = "train"
    streaming: bool = False
    max_documents: int = 0  # 0: all
    cache_dir: str = "data_cache"
    num_workers: int = 0  # 0: one per CPU core
    encoding_errors: str = "strict"  # strict | replace (undecodable bytes in text files)


@dataclass
class HardwareConfig:
    accelerator: str = "auto"  # auto | mlx | cuda | mps | cpu
    devices: int = 0  # processes to train with: 0 = as launched; N > 1 makes train.py launch N itself
    attention: str = "sdpa"  # sdpa | flash_attn
    distributed: str = "none"  # none | ddp | fsdp
    activation_checkpointing: bool = False


@dataclass
class OutputConfig:
    dir: str = "checkpoints"
    logs: str = "logs"
    run_name: str = ""  # "" -> the config file's stem; a plain name (its logs go to logs/<run_name>)
    overwrite: bool = False  # a new run may replace a finished run in output.dir (else it refuses)
    report_to: str = "none"  # none | tensorboard | wandb: also log the metrics there


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
    "training.dtype": ("float32", "bfloat16"),
    "training.on_nonfinite": ("stop", "skip"),
    "data.encoding_errors": ("strict", "replace"),
    "hardware.accelerator": ("auto", "mlx", "cuda", "mps", "cpu"),
    "hardware.attention": ("sdpa", "flash_attn"),
    "hardware.distributed": ("none", "ddp", "fsdp"),
    "output.report_to": ("none", "tensorboard", "wandb"),
}
ALIASES = {"hardware.accelerator": {"gpu": "cuda"}, "training.dtype": {"fp32": "float32", "bf16": "bfloat16"}}


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
            raw = yaml.safe_load(path.read_text()) or {}
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
    _require(
        m.max_seq_len <= MAX_POSITIONS,
        f"model.max_seq_len {m.max_seq_len} is beyond the {MAX_POSITIONS:,} positions supported; lower it",
    )


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
    _require(t.lr > 0, f"training.lr must be > 0, got {t.lr}")
    _require(0 <= t.min_lr <= t.lr, f"training.min_lr ({t.min_lr}) must be between 0 and training.lr ({t.lr})")
    _require(all(0 <= b < 1 for b in t.betas), f"training.betas must each be in [0, 1), got {list(t.betas)}")
    _require(t.eps > 0, f"training.eps must be > 0, got {t.eps}")
    _require(t.weight_decay >= 0, f"training.weight_decay must be >= 0, got {t.weight_decay}")
    _require(t.grad_clip >= 0, f"training.grad_clip must be >= 0 (0 disables), got {t.grad_clip}")
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
    """Parse `--section.key value` / `--section.key=value` pairs; values stay strings until typed."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(f"unexpected argument '{arg}'; overrides look like --training.lr 3e-4")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"--{key} needs a value, e.g. --{key} <value>")
            value = args[i + 1]
            i += 1
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section '{section}'{_closest(section, SECTIONS)}")
        hints = typing.get_type_hints(SECTIONS[section])
        if name not in hints:
            raise ConfigError(f"unknown config key '{key}'{_closest(key, [f'{section}.{n}' for n in hints])}")
        overrides[key] = value
        i += 1
    return overrides


def override_help() -> str:
    """One line per overridable key, for --help epilogs."""
    lines = ["config overrides (any key of config.yaml):"]
    for section, cls in SECTIONS.items():
        keys = " ".join(f"--{section}.{f.name}" for f in dataclasses.fields(cls))
        lines.append(f"  {keys}")
    return "\n".join(lines)
