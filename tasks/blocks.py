"""Credentials blocks: saved once, loaded by name, each returning a ready client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from tasks.errors import BlockNotFound, PrefectUnreachable
from tasks.ledger import Ledger
from tasks.mailman import ROSTER_PAGES_IN_FLIGHT, MailmanClient, rest_base
from tasks.novi import DEFAULT_REQUESTS_PER_SECOND, NOVI_PAGES_IN_FLIGHT, READ_RETRIES, NoviClient, api_base


SavedBlock = TypeVar("SavedBlock", bound=Block)


# Blocks the command line loaded to check them before a run, handed to that run once
# (`checked_for_the_run`): each load is a call to the Prefect API, 0.15-0.2 s here.
_CHECKED: dict[tuple[type, str], Block] = {}


@contextmanager
def checked_for_the_run() -> Iterator[None]:
    """While it lasts, blocks loaded with `saved(..., keep=True)` are given to the next
    `saved()` of the same block (the run the command starts), once; what is left is dropped at
    the end, so no later run in the process takes a block that may have been saved anew."""
    try:
        yield
    finally:
        _CHECKED.clear()


def saved(block_type: type[SavedBlock], name: str, *, keep: bool = False) -> SavedBlock:
    """The block saved under `name`; one that is not on the Prefect server is one clear error
    saying which server was asked and how to save it."""
    from prefect.settings import PREFECT_API_URL

    if (block_type, name) in _CHECKED:
        return _CHECKED.pop((block_type, name))  # type: ignore[return-value]
    server = PREFECT_API_URL.value() or "the temporary Prefect server of this process"
    try:
        block = block_type.load(name)
        if keep:
            _CHECKED[(block_type, name)] = block
        return block
    except httpx.TransportError as exc:  # refused, timed out: no answer at all
        raise PrefectUnreachable(f"the Prefect server at {server} does not answer ({exc or type(exc).__name__}): "
                                 "start it (`novi-mailman server start`) or set PREFECT_API_URL to one that "
                                 "runs") from None
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise
        how = ("`novi-mailman blocks --novi-url … --mailman-url …`" if block_type is not LedgerDatabase
               else "LedgerDatabase(url=…).save(name) (README: the ledger)")
        raise BlockNotFound(f"no {block_type.__name__} block named {name!r} on the Prefect server at {server}: "
                            f"blocks live on a Prefect server; save it there with {how}") from None


def _no_credentials(url: str) -> str:
    """URLs are shown in logs and the UI: a password inside one would leak, so refuse it."""
    if urlsplit(url.strip()).username is not None:
        raise ValueError("the URL must not hold a user or password: use the block's secret fields")
    return url.strip()


def _one_line(value: SecretStr, what: str) -> SecretStr:
    """A secret pasted with a line break or padding: `requests` would refuse the header and
    quote it, whole, in its error. Refused here, without showing it."""
    secret = value.get_secret_value()
    if not secret or secret != secret.strip() or any(ord(c) < 32 or ord(c) == 127 for c in secret):
        raise ValueError(f"the {what} is empty or holds a line break, a tab or padding spaces: paste it again "
                         "without them")
    return value


class NoviCredentials(Block):
    """A Novi AMS site and an API key for it (Settings → Advanced → API Keys).

    Saved by `novi-mailman blocks` or the UI's Blocks page; see the README, "Configuration".
    """

    # pydantic quotes the input of a refused field in its errors: never a secret or a URL.
    model_config = ConfigDict(**Block.model_config, hide_input_in_errors=True)

    _block_type_name = "Novi Credentials"
    _block_type_slug = "novi-credentials"  # fixed: renaming it would orphan saved blocks
    _description = "Site URL and API key of a Novi AMS site, for novi-mailman."
    _code_example = """
        from tasks.blocks import NoviCredentials

        novi = NoviCredentials.load("BLOCK_NAME").get_client()
        """

    site_url: str = Field(description="The site root, e.g. https://www.example.org (with or without /api).")
    api_key: SecretStr = Field(description="The API key, exactly as Novi shows it.")
    requests_per_second: float = Field(
        default=DEFAULT_REQUESTS_PER_SECOND, gt=0, le=20,
        description="Client-side cap; Novi reports 20/s and 600/min per key.")

    timeout_seconds: float = Field(default=60, gt=0, le=600, description="How long to wait for one answer.")
    read_retries: int = Field(default=READ_RETRIES, ge=0, le=10,
                              description="Retries of a page read that failed on a 429, 5xx or timeout.")
    pages_in_flight: int = Field(default=NOVI_PAGES_IN_FLIGHT, ge=1, le=8,
                                 description="Member pages asked for at once; requests_per_second still paces them.")

    @field_validator("site_url")
    @classmethod
    def _site(cls, value: str) -> str:
        api_base(value)  # raises ValueError with a readable message
        return _no_credentials(value)

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: SecretStr) -> SecretStr:
        return _one_line(value, "API key")

    def get_client(self) -> NoviClient:
        return NoviClient(self.site_url, self.api_key.get_secret_value(),
                          requests_per_second=self.requests_per_second, timeout=(10.0, self.timeout_seconds),
                          read_retries=self.read_retries, pages_in_flight=self.pages_in_flight)


class MailmanCredentials(Block):
    """A Mailman 3 core's REST API and its admin login.

    Saved by `novi-mailman blocks` or the UI's Blocks page; see the README, "Configuration".
    """

    # pydantic quotes the input of a refused field in its errors: never a secret or a URL.
    model_config = ConfigDict(**Block.model_config, hide_input_in_errors=True)

    _block_type_name = "Mailman Credentials"
    _block_type_slug = "mailman-credentials"
    _description = "REST URL and admin login of a GNU Mailman 3 core, for novi-mailman."
    _code_example = """
        from tasks.blocks import MailmanCredentials

        mailman = MailmanCredentials.load("BLOCK_NAME").get_client()
        """

    rest_url: str = Field(description="The core's REST root, e.g. http://127.0.0.1:8001 (with or without /3.1).")
    username: str = Field(default="restadmin", description="The REST admin user: [webservice] admin_user.")
    password: SecretStr = Field(description="The REST admin password: [webservice] admin_pass.")

    timeout_seconds: float = Field(default=60, gt=0, le=600, description="How long to wait for one answer.")
    pages_in_flight: int = Field(
        default=ROSTER_PAGES_IN_FLIGHT, ge=1, le=8,
        description="Roster pages and preference reads asked for at once; Mailman serves them on its REST "
                    "workers ([webservice] workers, 2 by default).")

    @field_validator("rest_url")
    @classmethod
    def _rest(cls, value: str) -> str:
        rest_base(value)
        return _no_credentials(value)

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        return _one_line(value, "password")

    def get_client(self) -> MailmanClient:
        return MailmanClient(self.rest_url, self.username, self.password.get_secret_value(),
                             timeout=(10.0, self.timeout_seconds), pages_in_flight=self.pages_in_flight)


class LedgerDatabase(Block):
    """Where the ledger lives when it is not the default SQLite file (e.g. a shared PostgreSQL).

    Saved from Python or the UI's Blocks page; see the README, "Configuration" (3. The ledger).
    """

    # pydantic quotes the input of a refused field in its errors: never a secret or a URL.
    model_config = ConfigDict(**Block.model_config, hide_input_in_errors=True)

    _block_type_name = "novi-mailman Ledger"
    _block_type_slug = "novi-mailman-ledger"
    _description = "SQLAlchemy URL of the novi-mailman ledger, e.g. postgresql+psycopg://user:pw@host/db."
    _code_example = """
        from tasks.blocks import LedgerDatabase

        ledger = LedgerDatabase.load("BLOCK_NAME").get_ledger()
        """

    url: SecretStr = Field(description="SQLAlchemy URL; it may hold a password, so it is kept secret.")

    def get_ledger(self, *, create: bool = True) -> Ledger:
        return Ledger(self.url.get_secret_value(), create=create)


def open_ledger(ledger_block: str | None, *, create: bool = True) -> Ledger:
    """The ledger a LedgerDatabase block names, else the default location
    (tasks.ledger.default_url)."""
    if not ledger_block:
        return Ledger(create=create)
    return saved(LedgerDatabase, ledger_block).get_ledger(create=create)
