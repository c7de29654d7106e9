"""`infer.py --chat`: a conversation rendered through the tokenizer's chat template, one answer at a time.

Each turn renders and encodes the whole conversation again (`Encode`: infer.py hands in data.chat.prompt_ids
with its tokenizer and template, as core/ never imports data/) and generates from a fresh KV cache: nothing is
cached across turns. When the conversation outgrows the context, its oldest turns are dropped (the system
message stays), with one note on stderr.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from typing import TextIO

from tinyllama.core.cli import UserError
from tinyllama.core.text import checked

Messages = list[dict[str, str]]
Encode = Callable[[Messages], list[int]]  # the conversation -> the ids of it + the generation prompt
Reply = Callable[[list[int]], str]  # prompt ids -> the answer's text (streamed to stdout as it is generated)
EXIT = ("/exit", "/quit")
RESET = "/reset"


class Conversation:
    """The messages so far, and the ids to feed for the next answer kept within `room` tokens."""

    def __init__(self, encode: Encode, system: str | None, room: int):
        self.encode, self.room = encode, room
        self.system = [{"role": "system", "content": system}] if system else []
        self.messages = list(self.system)
        self.trimmed = False

    def reset(self) -> None:
        self.messages = list(self.system)

    def ask(self, text: str) -> list[int]:
        """Add a user turn; returns the ids of the conversation + the generation prompt, dropping the oldest
        turns (never the system message or this turn) while they are more than `room` tokens."""
        self.messages.append({"role": "user", "content": text})
        ids = self.encode(self.messages)
        first = len(self.system)
        while len(ids) > self.room and len(self.messages) > first + 1:
            if not self.trimmed:
                print(
                    f"note: the conversation outgrew the context (over {self.room} tokens, with room left for "
                    "the answer); dropping its oldest turns",
                    file=sys.stderr,
                )
                self.trimmed = True
            end = first + 1
            while self.messages[end]["role"] != "user":  # the oldest user turn and the answers after it
                end += 1
            del self.messages[first:end]
            ids = self.encode(self.messages)
        return ids

    def answer(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})


def read_line(stdin: TextIO, number: int) -> str:
    """Line `number` of the conversation; bytes that are not UTF-8 are one line naming it (core/text.py)."""
    where = f"standard input line {number}"
    try:
        return checked(stdin.readline(), where)
    except UnicodeDecodeError as exc:  # a strict stream (not surrogateescape) fails here instead
        raise UserError(f"{where} is not UTF-8 text (byte offset {exc.start}); convert it to UTF-8") from None


def run_chat(conv: Conversation, reply: Reply, prompt: str | None = None, stdin: TextIO | None = None) -> None:
    """One answer to `prompt`, or a loop over the lines of `stdin` (default: sys.stdin) with the commands
    /reset, /exit and /quit; EOF ends it. Ctrl-C ends the answer's line, then propagates (core.cli.run_cli
    prints one line)."""
    if prompt is not None:
        conv.answer(reply(conv.ask(prompt)))
        return
    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    try:
        for number in itertools.count(1):
            if interactive:
                print(">>> ", end="", file=sys.stderr, flush=True)
            line = read_line(stdin, number)
            text = line.strip()
            if not line or text in EXIT:
                break
            if text == RESET:
                conv.reset()
                print("(conversation cleared)", file=sys.stderr)
            elif text.startswith("/") and " " not in text:
                print(f"unknown command {text}; use {RESET}, {EXIT[0]} or {EXIT[1]}", file=sys.stderr)
            elif text:
                conv.answer(reply(conv.ask(text)))
        if interactive and not line:
            print(file=sys.stderr)  # after Ctrl-D the shell prompt starts on its own line
    except KeyboardInterrupt:
        print(flush=True)  # end a half-written answer
        raise
