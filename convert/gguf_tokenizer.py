"""Byte-level BPE tokenizers between `tokenizer.json` and GGUF's `tokenizer.ggml.*` metadata.

GGUF carries no tokenizer.json: only tokens, token types, merges, special ids and a pre-tokenizer
*name* (`tokenizer.ggml.pre`) that llama.cpp maps to its own split regexes. Both directions go
through one table of pre-tokenizers we know exactly, so an export never relies on llama.cpp's
hash matching and an import never guesses how text was split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyllama.convert.common import ConvertError
from tinyllama.core.model_files import read_json_object

# gguf.TokenType values (kept literal so this module needs no gguf import)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


# tokenizer.ggml.pre -> the tokenizers pre-tokenizer that splits text the way llama.cpp does for it
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": _byte_level(True),
    "smollm": {  # llama.cpp: "\p{N}" then the GPT-2 regex (StarCoder, SmolLM)
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)],
    },
    "llama-bpe": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
            _byte_level(False),
        ],
    },
}
PRE_ALIASES = {"default": "gpt-2", "starcoder": "smollm", "llama3": "llama-bpe", "llama-v3": "llama-bpe"}
IGNORE_MERGES = {"llama-bpe"}


@dataclass
class GGUFVocab:
    """The tokenizer as GGUF stores it."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    unk_token_id: int | None = None
    pad_token_id: int | None = None
    add_bos_token: bool = False
    chat_template: str | None = None


def _signature(pre: dict[str, Any] | None) -> list[tuple]:
    """A pre-tokenizer reduced to what decides how text is split (offsets and trimming do not)."""
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _signature(p)]
    kind = pre.get("type")
    if kind == "ByteLevel":
        return [("ByteLevel", bool(pre.get("use_regex", True)), bool(pre.get("add_prefix_space", False)))]
    if kind == "Digits":
        return [("Digits", bool(pre.get("individual_digits", False)))]
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return [("Split", pattern.get("Regex", pattern.get("String")), str(pre.get("behavior")).lower())]
    return [(str(kind),)]


def detect_pre(pre_tokenizer: dict[str, Any] | None) -> str | None:
    """The `tokenizer.ggml.pre` name whose splitting equals this pre-tokenizer, or None."""
    wanted = _signature(pre_tokenizer)
    return next((name for name, spec in PRE_TOKENIZERS.items() if _signature(spec) == wanted), None)


# --------------------------------------------------------------------------- tokenizer.json -> GGUF


def vocab_from_tokenizer_dir(directory: Path, vocab_size: int, pre: str | None = None) -> GGUFVocab:
    """Read a byte-level BPE `tokenizer.json` (+ tokenizer_config.json) into GGUF's token lists.

    Token ids the tokenizer does not use up to the model's `vocab_size` become `[PAD{i}]` (UNUSED),
    as llama.cpp's converter does, since llama.cpp wants one token per embedding row."""
    file = directory / "tokenizer.json"
    if not file.is_file():
        raise ConvertError(f"{directory} has no tokenizer.json; pass --tokenizer DIR with a byte-level BPE tokenizer")
    fix = "replace it with a good copy or pass --tokenizer DIR"
    spec = read_json_object(file, fix)
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    if model.get("type") != "BPE":
        raise ConvertError(
            f"{file}: GGUF export needs a byte-level BPE tokenizer, this one is {model.get('type')}; "
            f"retrain the model with a BPE tokenizer (data.tokenizer gpt2 or bpe:N)"
        )
    byte_level = any(s[0] == "ByteLevel" for s in _signature(spec.get("pre_tokenizer")))
    if not byte_level or model.get("byte_fallback"):
        raise ConvertError(f"{file}: only byte-level BPE (GPT-2 style) tokenizers can be written to GGUF")
    if pre is None:
        pre = detect_pre(spec.get("pre_tokenizer"))
        if pre is None:
            raise ConvertError(
                f"{file}: its pre-tokenizer matches none llama.cpp knows by name ({', '.join(PRE_TOKENIZERS)}); "
                f"pass --tokenizer-pre NAME to state the right one"
            )
    vocab, added, merges = model.get("vocab"), spec.get("added_tokens") or [], model.get("merges") or []
    if not isinstance(vocab, dict) or not isinstance(added, list) or not all(isinstance(a, dict) for a in added):
        raise ConvertError(f"{file}: 'model.vocab' or 'added_tokens' has the wrong type; {fix}")
    entries = [(t, i, NORMAL) for t, i in vocab.items()]
    entries += [(a.get("content"), a.get("id"), CONTROL if a.get("special") else USER_DEFINED) for a in added]
    bad = next(((t, i) for t, i, _ in entries if not isinstance(t, str) or type(i) is not int or i < 0), None)
    if bad is not None:
        raise ConvertError(f"{file}: vocabulary entry {bad!r} is not a token and a non-negative id; {fix}")
    tokens: list[str | None] = [None] * vocab_size
    types = [NORMAL] * vocab_size
    for token, index, kind in entries:
        if index >= vocab_size:
            raise ConvertError(
                f"{file}: token id {index} ({token!r}) is outside the model's vocab_size {vocab_size}; "
                f"the tokenizer does not belong to this checkpoint"
            )
        tokens[index], types[index] = token, kind
    for index, token in enumerate(tokens):
        if token is None:
            tokens[index], types[index] = f"[PAD{index}]", UNUSED
    if not isinstance(merges, list) or not all(
        isinstance(m, str) or (isinstance(m, list) and all(isinstance(p, str) for p in m)) for m in merges
    ):
        raise ConvertError(f"{file}: 'merges' is not a list of token pairs; {fix}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]

    config_file = directory / "tokenizer_config.json"
    config = read_json_object(config_file, fix) if config_file.is_file() else {}
    template = config.get("chat_template")
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
    ids = {tok: i for i, tok in enumerate(tokens)}

    def special(name: str) -> int | None:
        value = config.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        return ids.get(value) if isinstance(value, str) else None

    return GGUFVocab(
        tokens=tokens,  # type: ignore[arg-type]
        token_types=types,
        merges=merges,
        pre=pre,
        bos_token_id=special("bos_token"),
        eos_token_id=special("eos_token"),
        unk_token_id=special("unk_token"),
        pad_token_id=special("pad_token"),
        add_bos_token=bool(config.get("add_bos_token", False)),
        chat_template=template if isinstance(template, str) else None,
    )


# --------------------------------------------------------------------------- GGUF -> tokenizer.json


def write_tokenizer_dir(vocab: GGUFVocab, directory: Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for a GGUF vocabulary."""
    from tokenizers import Tokenizer

    pre = PRE_ALIASES.get(vocab.pre, vocab.pre)
    if pre not in PRE_TOKENIZERS:
        raise ConvertError(
            f"unknown tokenizer.ggml.pre '{vocab.pre}' (known: {', '.join(PRE_TOKENIZERS)}); "
            f"pass --tokenizer DIR with the model's original tokenizer.json"
        )
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": kind == CONTROL,
        }
        for i, (t, kind) in enumerate(zip(vocab.tokens, vocab.token_types, strict=True))
        if kind in (CONTROL, USER_DEFINED)
    ]
    post: dict[str, Any] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    bos = vocab.tokens[vocab.bos_token_id] if vocab.bos_token_id is not None else None
    if vocab.add_bos_token and bos is not None:
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [vocab.bos_token_id], "tokens": [bos]}},
        }
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": pre in IGNORE_MERGES,
            "vocab": {t: i for i, t in enumerate(vocab.tokens)},
            "merges": [m.split(" ", 1) for m in vocab.merges],
        },
    }
    try:
        tokenizer = Tokenizer.from_str(json.dumps(spec))
    except Exception as exc:  # tokenizers raises plain Exception subclasses for malformed specs
        raise ConvertError(f"the GGUF's tokenizer metadata does not form a valid BPE tokenizer ({exc})") from None
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))

    def name(index: int | None) -> str | None:
        return vocab.tokens[index] if index is not None and 0 <= index < len(vocab.tokens) else None

    specials = {
        "bos_token": name(vocab.bos_token_id),
        "eos_token": name(vocab.eos_token_id),
        "unk_token": name(vocab.unk_token_id),
        "pad_token": name(vocab.pad_token_id),
    }
    specials = {k: v for k, v in specials.items() if v is not None}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": vocab.add_bos_token,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
        **specials,
    }
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")
    return directory
