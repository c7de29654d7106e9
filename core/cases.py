"""Probe cases for evaluate_checkpoints.py: the YAML file format and the tokens they are scored on.

A case file is a YAML list of mappings (docs/inference.md):

    - prompt: "The capital of Alabama is"
      expect: "Montgomery"
      name: alabama-capital        # optional, default "case<N>"
      tags: [geography, corpus]    # optional
      source: "Alabama (built-in corpus)"   # optional, free text

The scored text is the prompt, one space, then `expect` (no space when `expect` starts with
punctuation or the prompt ends with whitespace). Errors name the file, line and field.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from tinyllama.core.cli import UserError
from tinyllama.core.text import read_text

FIELDS = ("prompt", "expect", "name", "tags", "source")
NO_SPACE_BEFORE = tuple(".,;:!?)]}'\"%")


class CaseError(UserError):
    """A case file that cannot be used, phrased as `file:line: problem`."""


@dataclass(frozen=True)
class Case:
    name: str
    prompt: str
    expect: str
    tags: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""

    @property
    def joiner(self) -> str:
        if self.prompt[-1:].isspace() or self.expect.startswith(NO_SPACE_BEFORE):
            return ""
        return " "


def _scalar(node: yaml.Node, where: str, key: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
        raise CaseError(f"{where}: field '{key}' must be a text value")
    return node.value  # the text as written: `expect: 1809` stays "1809"


def load_cases(path: str | Path) -> list[Case]:
    """Parse and check a case file; every problem names the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"case file not found: {path}")
    text = read_text(path, "case file")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise CaseError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(root, yaml.SequenceNode) or not root.value:
        raise CaseError(f"{path}: expected a YAML list of cases ('- prompt: ...' / '  expect: ...')")
    cases, names = [], set()
    for number, item in enumerate(root.value, start=1):
        where = f"{path}:{item.start_mark.line + 1}: case {number}"
        if not isinstance(item, yaml.MappingNode):
            raise CaseError(f"{where}: expected a mapping with 'prompt' and 'expect'")
        values: dict[str, yaml.Node] = {}
        for key_node, value_node in item.value:
            key = key_node.value
            if key not in FIELDS:
                match = difflib.get_close_matches(key, FIELDS, n=1)
                hint = f" (did you mean '{match[0]}'?)" if match else f" (known: {', '.join(FIELDS)})"
                raise CaseError(f"{path}:{key_node.start_mark.line + 1}: case {number}: unknown field '{key}'{hint}")
            values[key] = value_node
        for key in ("prompt", "expect"):
            if key not in values:
                raise CaseError(f"{where}: missing field '{key}'")
            line = f"{path}:{values[key].start_mark.line + 1}: case {number}"
            if not _scalar(values[key], line, key).strip():
                raise CaseError(f"{line}: field '{key}' is empty")
        tags: tuple[str, ...] = ()
        if "tags" in values:
            node = values["tags"]
            line = f"{path}:{node.start_mark.line + 1}: case {number}"
            if isinstance(node, yaml.SequenceNode):
                tags = tuple(_scalar(t, line, "tags") for t in node.value)
            else:
                tags = (_scalar(node, line, "tags"),)
        name = _scalar(values["name"], where, "name") if "name" in values else f"case{number}"
        if name in names:
            raise CaseError(f"{path}:{values['name'].start_mark.line + 1}: case {number}: duplicate name '{name}'")
        names.add(name)
        cases.append(
            Case(
                name=name,
                prompt=_scalar(values["prompt"], where, "prompt"),
                expect=_scalar(values["expect"], where, "expect").strip(),
                tags=tags,
                source=_scalar(values["source"], where, "source") if "source" in values else "",
            )
        )
    return cases


def case_tokens(case: Case, encode: Callable[[str], list[int]]) -> tuple[list[int], list[int]]:
    """(prompt ids, continuation ids). The whole text is encoded once and split after the prompt's own
    tokens, so the continuation is tokenized as it appears in running text (' Paris', not 'Paris')."""
    prompt_ids = encode(case.prompt)
    whole = encode(case.prompt + case.joiner + case.expect)
    if whole[: len(prompt_ids)] == prompt_ids and len(whole) > len(prompt_ids):
        return prompt_ids, whole[len(prompt_ids) :]
    return prompt_ids, encode(case.joiner + case.expect)  # a merge across the boundary: encode apart


def score_layout(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], max_seq_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One right-padded batch that scores every (prompt, continuation) pair in a single forward pass.

    Returns (tokens (B, T), rows (M,), cols (M,), targets (M,)): the logits at [rows[j], cols[j]] predict
    targets[j]; the pairs' continuation tokens are concatenated in order. Causal attention means the
    padding on the right never changes a real position. Prompts beyond the context lose their oldest tokens."""
    seqs, rows, cols, targets = [], [], [], []
    for b, (prompt, cont) in enumerate(pairs):
        if not prompt or not cont:
            raise ValueError(f"pair {b}: prompt and continuation need at least one token each")
        if len(cont) > max_seq_len:
            raise ValueError(f"pair {b}: continuation of {len(cont)} tokens exceeds max_seq_len {max_seq_len}")
        seq = (list(prompt) + list(cont))[:-1]
        cut = max(0, len(seq) - max_seq_len)
        seqs.append(seq[cut:])
        start = len(prompt) - 1 - cut
        rows += [b] * len(cont)
        cols += range(start, start + len(cont))
        targets += list(cont)
    batch = np.zeros((len(seqs), max(len(s) for s in seqs)), dtype=np.int64)
    for b, seq in enumerate(seqs):
        batch[b, : len(seq)] = seq
    return batch, np.array(rows), np.array(cols), np.array(targets)


def split_scores(ranks: Sequence[int], logprobs: Sequence[float], pairs) -> list[tuple[int, list[float]]]:
    """Per pair: (rank of the continuation's first token, log-probs of its tokens) from the flat arrays."""
    results, at = [], 0
    for _, cont in pairs:
        results.append((int(ranks[at]), [float(x) for x in logprobs[at : at + len(cont)]]))
        at += len(cont)
    return results
