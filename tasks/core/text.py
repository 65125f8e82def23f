"""Novi's text where it is shown: escaped for markdown cells (the Prefect UI's artifacts) and
made inert for chat (Slack, Teams). A name, a reason or an address comes from Novi's data,
which anyone with a Novi account can write: it must read as text, never as a table border,
a link, HTML or a mention."""

from __future__ import annotations

import re

# What markdown reads as markup (CommonMark's backslash-escapable punctuation that matters in a
# cell): a backslash before each keeps it literal. `|` ends a cell; `<`, `&` open HTML and entities.
_MARKDOWN = re.compile(r"([\\`*_\[\]()<>|!~&#{}])")
_SPACE = re.compile(r"\s+")


def markdown_cell(value: object) -> str:
    """A value as the text of one markdown table cell (or an inline run): one line, every
    markup character escaped."""
    return _MARKDOWN.sub(r"\\\1", _SPACE.sub(" ", "" if value is None else str(value)).strip())


def chat_safe(text: str) -> str:
    """Text for a chat message: Slack's control sequences (`<!channel>`, `<@U123>`, `<url|text>`)
    and HTML come only from `<`, `>` and `&`, which Slack asks to be sent as entities (Teams
    shows the entities as the characters)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
