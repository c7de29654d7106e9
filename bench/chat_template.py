"""What do the chat-template bounds (data/template.py) cost? Data preparation renders every conversation
2 x (assistant turns) + 1 times (data.chat.pieces); this renders builtin-chat's conversations that way with
jinja2's plain ImmutableSandboxedEnvironment (how data/chat.py rendered before the bounds) and with the
bounded one, in turns, and checks that both write the same text.

    python bench/chat_template.py                     # 500 conversations, 7 turns
    python bench/chat_template.py --conversations 100 --turns 3

Per template: the median time per conversation of each, their ratio, and what encoding the same pieces
costs (tokenizers' encode_batch, GPT-2), the rest of data preparation's work per conversation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

from tinyllama.data import template as bounded  # noqa: E402
from tinyllama.data.chat import DEFAULT_TEMPLATE  # noqa: E402
from tinyllama.data.conversations import builtin_conversations  # noqa: E402
from tinyllama.data.tokenizer import load_tokenizer  # noqa: E402

# SmolLM2-Instruct's ChatML, with its default system prompt
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def renders(conversation: list[dict[str, str]]) -> list[tuple[list[dict[str, str]], bool]]:
    """The (messages, add_generation_prompt) pairs data.chat.pieces renders for one conversation."""
    out = [(conversation, False)]
    for i, message in enumerate(conversation):
        if message["role"] == "assistant":
            out += [(conversation[:i], True), (conversation[: i + 1], False)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--turns", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        talks = [json.loads(row)["messages"] for row in builtin_conversations(cache, args.conversations)]
    tokenizer = load_tokenizer("gpt2")
    tokens = {"eos_token": tokenizer.eos_token, "bos_token": "", "unk_token": "", "tools": None, "documents": None}
    work = [(messages, generation) for talk in talks for messages, generation in renders(talk)]
    plain_env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    print(f"{len(talks)} builtin-chat conversations, {len(work)} renders; jinja2 plain sandbox vs bounded, "
          f"median of {args.turns} turns")  # fmt: skip
    for name, text in (("default", DEFAULT_TEMPLATE), ("chatml", CHATML)):
        plain, checked = plain_env.from_string(text), bounded.compile_template(text)
        variants = {
            "plain": lambda t=plain: [t.render(messages=m, add_generation_prompt=g, **tokens) for m, g in work],
            "bounded": lambda t=checked: [
                bounded.render(t, messages=m, add_generation_prompt=g, **tokens) for m, g in work
            ],
        }
        texts = {key: run() for key, run in variants.items()}  # and the warm-up
        assert texts["plain"] == texts["bounded"], f"{name}: the bounded environment renders differently"
        seconds = {key: [] for key in variants}
        for _ in range(args.turns):
            for key, run in variants.items():
                start = time.perf_counter()
                run()
                seconds[key].append(time.perf_counter() - start)
        start = time.perf_counter()
        tokenizer.encode_batch(texts["plain"])
        encode = time.perf_counter() - start
        per = {key: statistics.median(v) / len(talks) * 1e6 for key, v in seconds.items()}
        ratio = statistics.median(b / a for a, b in zip(seconds["plain"], seconds["bounded"], strict=True))
        print(f"{name}: plain {per['plain']:.0f} us, bounded {per['bounded']:.0f} us per conversation "
              f"(+{per['bounded'] - per['plain']:.0f} us, {ratio:.2f}x); encoding its pieces "
              f"{encode / len(talks) * 1e6:.0f} us")  # fmt: skip


if __name__ == "__main__":
    main()
