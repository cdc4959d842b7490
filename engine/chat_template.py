"""Chat templates the way Hugging Face transformers loads and renders them, without transformers.

- Loading (`load_chat_templates`): `chat_template.jinja` and `additional_chat_templates/*.jinja` take
  priority over the `chat_template` entry of `tokenizer_config.json` (a string, or a list of
  `{name, template}`); several templates form a dict, and `select_template` picks `tool_use` when
  tools are given, else `default`.
- Rendering (`render`): the same sandboxed jinja environment (trim_blocks, lstrip_blocks,
  loopcontrols, a `generation` block tag, `tojson` without HTML escaping, `raise_exception`,
  `strftime_now`, guarded `dict` and `namespace`), the same variables (`messages`, `tools`,
  `documents`, `add_generation_prompt`, the tokenizer's `*_token` strings, then the caller's template
  kwargs), and the same message preparation (reasoning copied under `thinking` too).
- Control tokens in user input (`control_tokens`, `mark_control_tokens`): transformers'
  `sanitize_control_tokens` scheme. Control tokens written by the user are wrapped in private-use
  markers before rendering, so that encoding can spell them as text while the template's own
  markers stay tokens (the encoding half lives in `engine/tokenizer.py`).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

CONTROL_START = "\U000f0000"  # the markers transformers uses, so a marked render is byte-identical
CONTROL_END = "\U000f0001"
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "additional_chat_templates"
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
ChatTemplates = str | dict[str, str] | None


class ChatTemplateError(ValueError):
    """The template refused the input (its own `raise_exception`, or a type it cannot handle)."""


def load_chat_templates(model_dir: Path, tokenizer_config: dict[str, Any]) -> ChatTemplates:
    files: dict[str, str] = {}
    if (model_dir / TEMPLATE_FILE).is_file():
        files["default"] = (model_dir / TEMPLATE_FILE).read_text(encoding="utf-8")
    if (model_dir / TEMPLATE_DIR).is_dir():
        for path in sorted((model_dir / TEMPLATE_DIR).glob("*.jinja")):
            files[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if files:
        return files["default"] if list(files) == ["default"] else files
    entry = tokenizer_config.get("chat_template")
    if isinstance(entry, list):
        return {item["name"]: item["template"] for item in entry}
    return entry


def select_template(templates: ChatTemplates, has_tools: bool) -> str:
    if not templates:
        raise ValueError(f"this tokenizer has no chat template ({TEMPLATE_FILE} or tokenizer_config.json)")
    if isinstance(templates, str):
        return templates
    if has_tools and "tool_use" in templates:
        return templates["tool_use"]
    if "default" in templates:
        return templates["default"]
    raise ValueError(f"this model has several chat templates and no default: {sorted(templates)}")


def render(
    template: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
    special_tokens: dict[str, str],
    template_kwargs: dict[str, Any],
) -> str:
    """The rendered prompt text; template refusals raise ChatTemplateError with the template's message."""
    messages = [_alias_reasoning(m) for m in messages]
    try:
        return _compile(template).render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **{**special_tokens, **template_kwargs},
        )
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError) as error:
        raise ChatTemplateError(f"the chat template refused the chat: {error}") from error


def control_tokens(template: str, added_tokens: list[tuple[str, bool]]) -> tuple[str, ...]:
    """Added tokens that user text may not produce: every special token, and every other added token
    the template writes literally (whitespace tokens excepted). `added_tokens`: (content, special)."""
    literals = _template_literal_text(template)
    return tuple(
        content
        for content, special in added_tokens
        if special or (content in literals and not content.isspace())
    )


def mark_control_tokens(value: Any, tokens: tuple[str, ...]) -> Any:
    """Wrap the control tokens in every string of `value` (dict keys excepted) in the markers; markers
    already present are dropped first so they cannot be forged."""
    pattern = control_token_pattern(tokens)
    return _mark(value, pattern)


@lru_cache(maxsize=64)
def control_token_pattern(tokens: tuple[str, ...]) -> re.Pattern[str]:
    longest_first = sorted(tokens, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, longest_first)) or "(?!)")


@lru_cache(maxsize=64)
def marked_split_pattern(tokens: tuple[str, ...]) -> re.Pattern[str]:
    """Splits a marked render into [text, marked token, text, ...]; a lone marker gives None."""
    return re.compile(f"{CONTROL_START}({control_token_pattern(tokens).pattern}){CONTROL_END}|[{CONTROL_START}{CONTROL_END}]")


def _mark(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        value = value.replace(CONTROL_START, "").replace(CONTROL_END, "")
        return pattern.sub(f"{CONTROL_START}\\g<0>{CONTROL_END}", value)
    if isinstance(value, dict):
        return {key: _mark(item, pattern) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark(item, pattern) for item in value]
    return value


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[key] for key in REASONING_FIELDS if message.get(key) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


@lru_cache(maxsize=16)
def _template_literal_text(template: str) -> str:
    tree = _environment().parse(template)
    literals = {node.data for node in tree.find_all(jinja2.nodes.TemplateData)}
    literals |= {node.value for node in tree.find_all(jinja2.nodes.Const) if isinstance(node.value, str)}
    return "\0".join(literals)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    return _environment().from_string(template)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; serving only
    renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


class _TemplateDict:
    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore attributes (no way into CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (jinja's Namespace signature trick)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env
