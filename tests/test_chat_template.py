"""A chat template is code from strangers: every way one fails (syntax, reading another file, recursion, a
runtime error, a loop that never ends, a huge output, an empty or binary file) is one line naming where the
template came from, within seconds, in data preparation as in infer.py --chat (tests/test_infer_chat.py and
the bad-input matrix run the commands). Normal templates render as transformers renders them
(tests/test_chat_data.py)."""

from __future__ import annotations

import json
import time

import pytest

from tinyllama.core.config import load_config
from tinyllama.data import template as bounds
from tinyllama.data.chat import ChatTemplate, read_template, render
from tinyllama.data.prepare import prepare_data
from tinyllama.data.tokenizer import load_tokenizer
from tinyllama.data.util import DataError

TALK = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
BIG = "{% set big = 'x' * 1000000 %}"
# name -> (template, what its one line says)
HOSTILE = {
    "nested-loops": (
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        "did not finish within",
    ),
    "loops-over-a-list": (
        "{% set l = range(100000)|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}",
        "did not finish within",
    ),
    "recursive-macro": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "calls nest deeper than 50"),
    "recursive-loop": ("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", "calls nest deeper than 50"),
    "include": ("{% include '/etc/passwd' %}", "includes another template ('/etc/passwd', line 1)"),
    "import": ("{% from 'macros.jinja' import m %}{{ m() }}", "imports another template"),
    "extends": ("{% extends 'base.jinja' %}", "extends another template"),
    "zero-division": ("{{ 1 / 0 }}", "failed (ZeroDivisionError: division by zero)"),
    "type-error": ("{{ messages + 1 }}", "failed (TypeError"),
    "refusal": ("{{ raise_exception('roles must alternate') }}", "refused the conversation: roles must alternate"),
    "sandbox": ("{{ ''.__class__.__mro__ }}", "did what the sandbox forbids"),
    "syntax": ("{% for m in messages %}{{ m['content'] }", "does not parse (unexpected '}', line 1)"),
    "huge-output": (BIG + "{% for i in range(100) %}{{ big }}{% endfor %}", "writes more than 8,388,608 characters"),
    "huge-string": ("{{ 'x' * 10**10 }}", "more than 8,388,608 characters"),
    "doubling": (
        "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
        "more than 8,388,608 characters",
    ),
    "nested-lists": (
        "{% set ns = namespace(x=[0]) %}{% for i in range(64) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}"
        "{{ ns.x|tojson }}",
        "more than 8,388,608 characters",
    ),
    "block": (BIG + "{% set s %}{% for i in range(100) %}{{ big }}{% endfor %}{% endset %}", "a block of more than"),
    "wide-filter": ("{{ 'x'|center(10**10) }}", "passes 10,000,000,000 to the center filter"),
    "wide-format": ("{{ '%10000000000d' % 1 }}", "formats with a width of 100,000 characters or more"),
    "wide-method": ("{{ '{:>10000000000}'.format(1) }}", "formats with a width of 100,000 characters or more"),
    "huge-power": ("{% set n = 10 ** 1000 %}{{ n * n * n * n }}", "an integer of more than 4096 bits"),
}


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_template_is_one_line_naming_it_within_seconds(name, gpt2):
    text, says = HOSTILE[name]
    start = time.perf_counter()
    with pytest.raises(DataError) as caught:
        render(ChatTemplate(text, "data.chat_template t.jinja"), TALK, gpt2, False, "row 7")
    line = str(caught.value)
    assert line.startswith("data.chat_template t.jinja ") and says in line and "\n" not in line, line
    assert time.perf_counter() - start < bounds.SECONDS + 5
    if name not in ("syntax", "include", "import", "extends"):  # refused when compiled: no conversation yet
        assert line.startswith("data.chat_template t.jinja on row 7: "), line


def test_bounds_reset_for_each_render_and_leave_real_templates_alone(gpt2):
    """A template spending most of its steps in one render renders again (steps are per render), and the
    transformers-style extras work: tojson, loop.last, namespace, raise_exception unused."""
    heavy = ChatTemplate(
        "{% for i in range(100000) %}{% for j in range(6) %}{% endfor %}{% endfor %}{{ messages|tojson }}", "t"
    )  # 700,001 steps of the 1,000,000
    for _ in range(3):
        assert json.loads(render(heavy, TALK, gpt2, False)) == TALK
    tools = ChatTemplate(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{{ m.role }}:{{ m.content }}{% if not loop.last %}|{% endif %}{% endfor %} {{ ns.n }}",
        "t",
    )
    assert render(tools, TALK, gpt2, False) == "user:hi|assistant:hello 2"


@pytest.mark.parametrize(
    "content, says",
    [
        (b"", "is empty; write a jinja2 chat template in it"),
        (b" \n\t\n", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "is not UTF-8 text (byte offset 0: 0x89)"),
        (b"{{ messages }}\x00\x00", "holds binary data (a NUL byte at offset 14)"),
        (b"{{ 'caf\xe9' }}", "is not UTF-8 text (byte offset 7: 0xe9)"),
    ],
    ids=["empty", "blank", "png", "nul", "latin1"],
)
def test_a_template_file_that_is_not_a_template_is_one_line(tmp_path, content, says):
    file = tmp_path / "t.jinja"
    file.write_bytes(content)
    with pytest.raises(DataError, match="^--chat-template " + str(file)) as caught:
        read_template(file, "--chat-template")
    assert says in str(caught.value)
    with pytest.raises(DataError, match=f"cannot read --chat-template {tmp_path / 'gone.jinja'}"):
        read_template(tmp_path / "gone.jinja", "--chat-template")


def _prepare_chat(tmp_path, template: str):
    (tmp_path / "chat.jsonl").write_text((json.dumps({"messages": TALK}) + "\n") * 20)
    over = {
        "data.dataset": str(tmp_path / "chat.jsonl"),
        "data.tokenizer": "gpt2",
        "data.cache_dir": str(tmp_path / "cache"),
        "data.chat_template": template,
    }
    return prepare_data(load_config(None, over).data, progress=False, log=lambda *_: None)


@pytest.mark.parametrize("name", ["nested-loops", "recursive-macro", "include", "zero-division", "huge-output"])
def test_data_preparation_names_the_template_file_and_the_row_and_keeps_nothing(tmp_path, name):
    file = tmp_path / f"{name}.jinja"
    file.write_text(HOSTILE[name][0])
    with pytest.raises(DataError) as caught:
        _prepare_chat(tmp_path, str(file))
    line = str(caught.value)
    assert line.startswith(f"data.chat_template {file} ") and HOSTILE[name][1] in line, line
    if name != "include":
        assert f" on {tmp_path / 'chat.jsonl'} row 1: " in line, line
    prepared = tmp_path / "cache" / "prepared"
    assert not [p for p in prepared.iterdir() if not p.name.endswith(".lock")]  # no partial, no half-made cache


def test_an_empty_template_file_is_refused_not_ignored(tmp_path):
    (tmp_path / "empty.jinja").write_text("")
    with pytest.raises(DataError, match="data.chat_template .*empty.jinja is empty"):
        _prepare_chat(tmp_path, str(tmp_path / "empty.jinja"))
    with pytest.raises(DataError, match="cannot read data.chat_template .*chat.jinja2"):  # not taken as a template
        _prepare_chat(tmp_path, str(tmp_path / "chat.jinja2"))


def test_the_tokenizers_own_template_is_named_by_its_file(tmp_path, gpt2):
    """A tokenizer directory (a checkpoint's, a Hub download's) with a hostile chat_template: the line names
    its tokenizer_config.json."""
    gpt2.save(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    config["chat_template"] = HOSTILE["nested-loops"][0]
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(config))
    from tinyllama.data.chat import prompt_ids

    tok = load_tokenizer(str(tmp_path / "tok"))
    with pytest.raises(DataError, match=f"^the chat template in {tmp_path / 'tok' / 'tokenizer_config.json'} on a"):
        prompt_ids(tok, TALK)
    (tmp_path / "tok" / "chat_template.jinja").write_bytes(b"\xff\xfe{")
    del config["chat_template"]
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="chat_template.jinja is not UTF-8 text"):
        load_tokenizer(str(tmp_path / "tok"))
