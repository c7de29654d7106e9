"""What every converter shares: one error type, checks of OUT before the work, verified reads, dtype casts,
failed writes as one line.

Outputs are written through core.fs.atomic_path: beside OUT under a hidden temporary name, renamed onto
OUT only when the whole conversion succeeded, so a failure (bad input, Ctrl-C, full disk) never leaves
half a model, and an existing OUT replaced with --force stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from tinyllama.core.architecture import no_format_for
from tinyllama.core.checkpoint import TOKENIZER_FILES, save_checkpoint
from tinyllama.core.cli import UserError, human_bytes
from tinyllama.core.config import ConfigError, ModelConfig, validate_model
from tinyllama.core.dtypes import canonical_dtype, numpy_dtype
from tinyllama.core.fs import atomic_path
from tinyllama.core.model_files import load_weights, read_json_object

FP16_MAX = 65504.0


class ConvertError(UserError):
    """Bad input for a conversion: one line naming the problem and the fix, exit code 2."""


def check_model_config(cfg: ModelConfig, source: str) -> ModelConfig:
    """Apply core.config's invariants (heads divide, even head dim, ...) to an imported config."""
    try:
        validate_model(cfg)
    except ConfigError as exc:
        raise ConvertError(f"{source}: {exc}") from None
    return cfg


def load_checked_weights(path: str | Path, cfg: ModelConfig, fix: str) -> dict[str, np.ndarray]:
    """A model directory's weights through core.checkpoint.load_weights, which checks the headers before it
    reads anything (dtypes, a size bound from the files, names and shapes) and the values after; a file
    that cannot even be listed is one line too."""
    try:
        return load_weights(path, cfg, fix=fix)
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read its weight files ({exc.strerror or exc}); {fix}") from None


def cast_weights(weights: dict[str, np.ndarray], dtype: str, source: str | Path = "") -> dict[str, np.ndarray]:
    """Every tensor in `dtype`, verified finite after the cast: a value beyond the target's range (fp16's
    65504, or bf16 rounding up past float32's max) is refused instead of written as inf."""
    target = numpy_dtype(canonical_dtype(dtype))
    where = f"{source}: " if source else ""
    out = {}
    for name, value in weights.items():
        if value.dtype == target:
            out[name] = value
            continue
        as_f32 = value.astype(np.float32)
        if target == np.float16 and np.abs(as_f32).max(initial=0.0) > FP16_MAX:
            raise ConvertError(
                f"{where}tensor '{name}' has values beyond fp16's range (65504); export with --dtype bf16"
            )
        cast = as_f32.astype(target)
        if not np.isfinite(cast.astype(np.float32)).all():
            raise ConvertError(f"{where}tensor '{name}' overflows {canonical_dtype(dtype)}; choose --dtype float32")
        out[name] = cast
    return out


# ------------------------------------------------------------------------------ tokenizers


def prepare_tokenizer(src: Path, tmp: Path, vocab_size: int) -> Path | None:
    """Copy a tokenizer's files (only TOKENIZER_FILES: no code) into `tmp`, checked, or None when `src` has
    none. tokenizer.json must load with `tokenizers` and fit the model's vocabulary; tokenizer_config.json
    loses `auto_map` (remote code is never used) and gains a separate chat_template.jinja (transformers 5)."""
    from tokenizers import Tokenizer

    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not names:
        return None
    fix = "repair it or pass --tokenizer DIR"
    tokenizer_json = src / "tokenizer.json"
    if tokenizer_json.is_file():
        try:
            size = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True)
        except Exception as exc:  # tokenizers raises plain Exception for malformed files
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise ConvertError(f"{tokenizer_json} is not a valid tokenizer ({reason}); {fix}") from None
        if size > vocab_size:
            raise ConvertError(
                f"{tokenizer_json} has {size} tokens but the model's vocab_size is {vocab_size}; "
                f"the tokenizer does not belong to this model: pass --tokenizer DIR with its own"
            )
    tmp.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(src / name, tmp / name)
    if "tokenizer_config.json" in names:
        config = read_json_object(tmp / "tokenizer_config.json", fix)
        config.pop("auto_map", None)
        if (src / "chat_template.jinja").is_file():
            template = (src / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
            config.setdefault("chat_template", template)
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return tmp


def tokenizer_dir_arg(path: str | Path) -> Path:
    """A --tokenizer DIR argument: a directory holding tokenizer.json."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise ConvertError(f"--tokenizer {path}: expected a directory containing tokenizer.json")
    return path


# ------------------------------------------------------------------------------ outputs


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


def check_output(out: str | Path, force: bool, kind: str = "dir", source: str | Path | None = None) -> Path:
    """Before any work, so a typo costs nothing: OUT is new (or --force), is not the input nor a folder
    holding it, replacing it keeps its kind (a directory is never swapped for a file or the reverse), and the
    nearest existing folder above it is a directory this process can create files in (not read-only, not a
    file)."""
    out = Path(out)
    if source is not None and (
        out.resolve() == Path(source).resolve() or out.resolve() in Path(source).resolve().parents
    ):
        raise ConvertError(f"{out} is the input {source} or holds it; choose another output path")
    if out.exists() or out.is_symlink():
        if not force:
            raise ConvertError(f"{out} already exists; pass --force to replace it, or choose another output path")
        if kind == "dir" and not out.is_dir():
            raise ConvertError(f"{out} is a file and the output is a directory; remove it or choose another path")
        if kind == "file" and out.is_dir():
            raise ConvertError(f"{out} is a directory and the output is a file; remove it or choose another path")
    base = _nearest_existing(out.parent)
    if not base.is_dir():
        raise ConvertError(f"{out}: {base} is a file, not a directory; choose another output path")
    try:
        tempfile.TemporaryFile(dir=base).close()
    except OSError as exc:
        raise ConvertError(f"{out}: cannot write in {base} ({exc.strerror}); choose another output path") from None
    return out


def free_bytes(path: Path) -> int:
    """Free space where `path` would be written (the nearest existing folder above it)."""
    return shutil.disk_usage(_nearest_existing(path.parent)).free


def check_space(out: Path, needed: int) -> None:
    """Refuse before writing when OUT's file system cannot hold `needed` bytes (a lower bound of the output)."""
    free = free_bytes(out)
    if needed > free:
        where = _nearest_existing(out.parent)
        raise ConvertError(
            f"{out}: needs at least {human_bytes(needed)} but {where} has {human_bytes(free)} free; "
            f"free some space or choose another output path"
        )


_WRITE_FIXES = {
    errno.ENOSPC: "free some space or choose another output path",
    errno.EDQUOT: "free some space or choose another output path",
    errno.EROFS: "the file system is read-only: choose another output path",
    errno.EACCES: "check the permissions or choose another output path",
    errno.EPERM: "check the permissions or choose another output path",
}


def _nearly_full(out: Path) -> bool:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(_nearest_existing(out.parent)).free < (16 << 20)
    return False


def write_failure(out: Path, exc: BaseException) -> ConvertError:
    """One line for a write that failed mid-way; the errno comes from OSError or from the text of a
    SafetensorError / mlx RuntimeError ('os error 28', 'No space left')."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    if code is None and (match := re.search(r"os error (\d+)", text)):
        code = int(match.group(1))
    if code is None and ("No space left" in text or _nearly_full(out)):  # numpy's tofile: 'N requested, M written'
        code = errno.ENOSPC
    reason = getattr(exc, "strerror", None) or (os.strerror(code) if code else "")
    reason = reason or (text.splitlines()[0] if text else type(exc).__name__)
    fix = _WRITE_FIXES.get(code, "check free space and permissions, or choose another output path")
    return ConvertError(f"{out}: writing failed ({reason}); nothing was written: {fix}")


@contextlib.contextmanager
def write_errors(out: Path, extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Around the step that writes OUT: a failed write (full disk, read-only, I/O error; `extra` for a
    library's own error type) becomes one line naming OUT, and folders made for OUT are removed again."""
    out = Path(out)
    made = []
    parent = out.parent.absolute()
    while not parent.exists() and parent != parent.parent:
        made.append(parent)
        parent = parent.parent
    try:
        yield
    except BaseException as exc:
        for folder in made:  # deepest first; only the empty folders this write created
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, (OSError, SafetensorError, *extra)):
            raise write_failure(out, exc) from None
        raise


@contextlib.contextmanager
def writing(out: Path, extra: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """`core.fs.atomic_path(out)` inside `write_errors`: the temporary path is removed on any failure and
    an existing OUT is untouched."""
    with write_errors(out, extra), atomic_path(out) as tmp:
        yield tmp


def write_imported(
    out: Path, weights: dict[str, np.ndarray], cfg: ModelConfig, src: str | Path, tok_dir: Path | None,
    bos_token_id: int | None, eos_token_id: int | None,
) -> Path:  # fmt: skip
    """The checkpoint an import writes (both importers): verified weights, step 0, where they came from."""
    check_space(out, sum(v.nbytes for v in weights.values()))
    state = {"step": 0, "tokens_seen": 0, "imported_from": str(Path(src).resolve()), "backend": "convert"}
    with write_errors(out):
        return save_checkpoint(
            out, weights, cfg, tokenizer_dir=tok_dir, trainer_state=state,
            bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        )  # fmt: skip


def check_expressible(ckpt: str | Path, cfg: ModelConfig, tool: str) -> None:
    """A model with a switch no other tool computes (core.architecture.no_format_for) is refused by every exporter
    in one line naming the key; our own tools keep running it."""
    if no_format_for(cfg):
        raise ConvertError(
            f"{ckpt}: {tool} has no architecture for {no_format_for(cfg)}; only this project's tools run it "
            f"(infer.py, evaluate_checkpoints.py, the trainers)"
        )
