"""infer.py --chat: one-shot and REPL turns through the chat template, on both backends.

The checkpoint is a bigram machine: embeddings are one-hot and every block's output projections are zero,
so the logits depend on the last token only, and the LM head maps each token to one chosen next token.
After `<|assistant|>` it answers `w10 w11 <eot> w12 ...`: an answer of exactly `w10 w11` shows generation
stopped at the end-of-turn id (which is not the EOS). The ids each turn feeds the model are recorded by
wrapping Backend.generate (the real generation still runs).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from helpers import run_infer

from tinyllama.core.architecture import parameter_shapes
from tinyllama.core.backend import Backend
from tinyllama.core.checkpoint import save_checkpoint
from tinyllama.core.config import ModelConfig
from tinyllama.data.chat import DEFAULT, prompt_ids
from tinyllama.data.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECIAL = ["<unk>", "<eos>", "<eot>", "<|user|>", "<|assistant|>", "<|system|>"]
V = 40
CFG = ModelConfig(
    vocab_size=V, n_layers=1, d_model=V, n_heads=4, n_kv_heads=2, d_ff=16, tie_embeddings=False, max_seq_len=64
)
EOS, EOT, USER, ASSISTANT, SYSTEM = 1, 2, 3, 4, 5
NEXT = {ASSISTANT: 10, 10: 11, 11: EOT, EOT: 12, 12: 13, 13: EOT}  # any other token -> w20
TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <eot> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def bigram_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    weights = {}
    for name, shape in parameter_shapes(CFG).items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):  # the blocks add nothing to the residual stream
            weights[name] = np.zeros(shape, np.float32)
        else:
            weights[name] = np.ones(shape, np.float32) if len(shape) == 1 else rng.standard_normal(shape, np.float32)
    weights["model.embed_tokens.weight"] = np.eye(V, CFG.d_model, dtype=np.float32)
    head = np.zeros((V, CFG.d_model), dtype=np.float32)
    for token in range(V):
        head[NEXT.get(token, 20), token] = 10.0  # after the final norm: logit 10 * sqrt(d_model) for the next token
    weights["lm_head.weight"] = head
    return weights


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tokenizers import AddedToken, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend_

    root = tmp_path_factory.mktemp("chat")
    vocab = {**{t: i for i, t in enumerate(SPECIAL)}, **{f"w{i}": i for i in range(len(SPECIAL), V)}}
    backend = Backend_(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<eos>", "<eot>")])
    (root / "tok").mkdir()
    backend.save(str(root / "tok" / "tokenizer.json"))
    config = {"eos_token": "<eos>", "unk_token": "<unk>", "chat_template": TEMPLATE}
    (root / "tok" / "tokenizer_config.json").write_text(json.dumps(config))
    return save_checkpoint(root / "m.ckpt", bigram_weights(), CFG, tokenizer_dir=root / "tok", eos_token_id=EOS)


@pytest.fixture(scope="module")
def tok(ckpt):
    return Tokenizer.from_dir(ckpt)


@pytest.fixture
def fed(monkeypatch):
    """The prompt ids of every Backend.generate call, in order."""
    calls: list[list[int]] = []
    real = Backend.generate

    def spy(self, ids, *args, **kwargs):
        calls.append(list(ids))
        return real(self, ids, *args, **kwargs)

    monkeypatch.setattr(Backend, "generate", spy)
    return calls


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class CtrlC(io.StringIO):
    """One line, then Ctrl-C while reading the next."""

    def readline(self, *args) -> str:
        if self.tell():
            raise KeyboardInterrupt
        return super().readline(*args)


def chat_argv(ckpt, *extra: str, backend: str = "torch") -> list[str]:
    return ["--ckpt", str(ckpt), "--chat", "--backend", backend, "--temperature", "0", "--max-tokens", "20", *extra]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


SYS = {"role": "system", "content": "w7 w8"}


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_one_shot_feeds_the_template_and_stops_at_end_of_turn(ckpt, tok, fed, backend, capsys, monkeypatch):
    argv = chat_argv(ckpt, "--system-prompt", "w7 w8", "-p", "w6 w16", backend=backend)
    code, out, err = run_infer(argv, capsys, monkeypatch)
    assert code == 0, err
    assert fed == [prompt_ids(tok, [SYS, user("w6 w16")])]
    assert fed[0] == [SYSTEM, 7, 8, EOT, USER, 6, 16, EOT, ASSISTANT]  # the template as written, system first
    assert out == "w10 w11\n"  # stopped at <eot> (id 2), not EOS (id 1); --max-tokens is 20
    assert "generated 2 tokens" in err and "chat template" not in err and ">>>" not in err


def test_one_shot_reads_stdin_and_max_tokens_cuts_the_answer(ckpt, tok, fed, capsys, monkeypatch):
    argv = [*chat_argv(ckpt, "-p", "-"), "--max-tokens", "1"]
    code, out, err = run_infer(argv, capsys, monkeypatch, stdin="w6 w16\n")
    assert code == 0, err
    assert fed == [prompt_ids(tok, [user("w6 w16")])]
    assert out == "w10\n"


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_repl_keeps_the_conversation_until_reset_and_exit(ckpt, tok, fed, backend, capsys, monkeypatch):
    lines = "w6 w16\n\nw9\n/reset\nw13\n/exit\nw14\n"
    code, out, err = run_infer(chat_argv(ckpt, "--system-prompt", "w7 w8", backend=backend), capsys, monkeypatch, lines)
    assert code == 0, err
    first = [SYS, user("w6 w16")]
    assert fed == [
        prompt_ids(tok, first),
        prompt_ids(tok, [*first, assistant("w10 w11"), user("w9")]),  # the first answer is in it
        prompt_ids(tok, [SYS, user("w13")]),  # /reset keeps the system prompt only; w14 after /exit
    ]
    assert fed[1][len(fed[0]) :] == [10, 11, EOT, USER, 9, EOT, ASSISTANT]
    assert out == "w10 w11\n" * 3
    assert ">>>" not in out + err  # piped: no prompt


def test_repl_ends_at_eof_and_drops_the_oldest_turns_when_too_long(ckpt, tok, fed, capsys, monkeypatch):
    turns = [" ".join(f"w{6 + (t + i) % 30}" for i in range(10)) for t in range(4)]
    code, out, err = run_infer(chat_argv(ckpt, "--system-prompt", "w7 w8"), capsys, monkeypatch, "\n".join(turns))
    assert code == 0, err
    assert out == "w10 w11\n" * 4
    # 64 tokens of context - 20 new = 44 for the prompt; each turn costs 12 + 4 tokens, the system message 4
    assert [len(ids) for ids in fed] == [17, 33, 33, 33]  # the third would be 49: turn 1 goes
    assert fed[2] == prompt_ids(tok, [SYS, user(turns[1]), assistant("w10 w11"), user(turns[2])])
    assert fed[3] == prompt_ids(tok, [SYS, user(turns[2]), assistant("w10 w11"), user(turns[3])])
    assert err.count("dropping its oldest turns") == 1


def test_max_tokens_beyond_the_context_leaves_the_conversation_whole(ckpt, tok, fed, capsys, monkeypatch):
    argv = [*chat_argv(ckpt), "--max-tokens", "100"]  # max_seq_len is 64: half of it stays for the conversation
    code, out, err = run_infer(argv, capsys, monkeypatch, "w6 w16\nw9\n")
    assert code == 0, err
    assert fed[1] == prompt_ids(tok, [user("w6 w16"), assistant("w10 w11"), user("w9")])
    assert out == "w10 w11\n" * 2 and "warning" not in err and "dropping" not in err


def test_a_tty_gets_a_prompt_and_commands_are_checked(ckpt, fed, capsys, monkeypatch):
    code, out, err = run_infer(chat_argv(ckpt), capsys, monkeypatch, TTY("/help\nw16\n"))
    assert code == 0, err
    assert err.count(">>> ") == 3 and "unknown command /help" in err
    assert len(fed) == 1 and out == "w10 w11\n"


def test_ctrl_c_ends_with_one_line(ckpt, fed, capsys, monkeypatch):
    code, out, err = run_infer(chat_argv(ckpt), capsys, monkeypatch, CtrlC("w16\nw6\n"))
    assert code == 130 and out == "w10 w11\n\n" and len(fed) == 1
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err


def test_without_a_template_the_default_is_used_with_a_note(ckpt, tok, tmp_path, fed, capsys, monkeypatch):
    plain = tmp_path / "plain.ckpt"
    plain.mkdir()
    for file in ckpt.iterdir():
        (plain / file.name).write_bytes(file.read_bytes())
    config = json.loads((plain / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    code, out, err = run_infer([*chat_argv(plain, "-p", "w16"), "--max-tokens", "4"], capsys, monkeypatch)
    assert code == 0, err
    assert fed == [prompt_ids(tok, [user("w16")], DEFAULT)] == [[USER, 16, EOS, ASSISTANT]]
    assert err.count("note: the tokenizer has no chat template") == 1
    assert out == "w10 w11 <eot> w12\n"  # the default template's turns end at EOS: <eot> is an ordinary token


def test_chat_template_file_overrides_the_tokenizers(ckpt, tok, tmp_path, fed, capsys, monkeypatch):
    file = tmp_path / "t.jinja"
    file.write_text(  # every answer starts with w12, so the model goes on with w13
        TEMPLATE.replace(
            "'|> ' + m['content']", "'|> ' + ('w12 ' if m['role'] == 'assistant' else '') + m['content']"
        ).replace("'<|assistant|>'", "'<|assistant|> w12'")
    )
    code, out, err = run_infer(chat_argv(ckpt, "--chat-template", str(file), "-p", "w16"), capsys, monkeypatch)
    assert code == 0, err
    assert fed == [[USER, 16, EOT, ASSISTANT, 12]] and out == "w13\n"


def one_error_line(result, *fragments):
    code, _, err = result
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_input_is_one_line_and_exit_2(ckpt, tmp_path, fed, capsys, monkeypatch):
    base = chat_argv(ckpt)
    one_error_line(run_infer([*base, "-p", "w16", "-p", "w6"], capsys, monkeypatch), "--chat takes one --prompt")
    one_error_line(run_infer([*base, "--prompt-file", "p.txt"], capsys, monkeypatch), "--chat", "--prompt-file")
    plain = ["--ckpt", str(ckpt), "-p", "w16"]
    one_error_line(run_infer([*plain, "--system-prompt", "w7"], capsys, monkeypatch), "need --chat")
    missing = tmp_path / "missing.jinja"
    result = run_infer([*base, "--chat-template", str(missing)], capsys, monkeypatch)
    one_error_line(result, "cannot read", str(missing))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    result = run_infer([*base, "--chat-template", str(broken)], capsys, monkeypatch)
    one_error_line(result, f"--chat-template {broken} does not parse")
    one_error_line(run_infer([*base, "-p", "-"], capsys, monkeypatch, stdin=""), "empty standard input")
    assert fed == []


@pytest.mark.parametrize(
    "template, says",
    [
        ("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}", "did not finish"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "calls nest deeper than 50"),
        ("{% include 'secrets.txt' %}", "includes another template ('secrets.txt'"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("", "is empty"),
        ("{% if messages is string %}x{% endif %}", "renders the conversation as no text at all"),
    ],
    ids=["loop", "recursion", "include", "zero-division", "empty", "no-text"],
)
def test_a_hostile_template_is_one_line_naming_it_before_anything_is_generated(
    ckpt, tmp_path, fed, capsys, monkeypatch, template, says
):
    file = tmp_path / "t.jinja"
    file.write_text(template)
    one_error_line(
        run_infer(chat_argv(ckpt, "-p", "w6", "--chat-template", str(file)), capsys, monkeypatch), str(file), says
    )
    own = tmp_path / "own.ckpt"  # the same template as the checkpoint's own: the line names its file
    own.mkdir()
    for path in ckpt.iterdir():
        (own / path.name).write_bytes(path.read_bytes())
    config = json.loads((own / "tokenizer_config.json").read_text())
    (own / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template or " "}))
    result = run_infer(chat_argv(own, "-p", "w6"), capsys, monkeypatch)
    one_error_line(result, f"the chat template in {own / 'tokenizer_config.json'} ", says)
    assert fed == []
