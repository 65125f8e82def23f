"""Typed failures of a sync. Messages never carry secrets or member addresses."""

from __future__ import annotations


class SyncError(Exception):
    """Base of every failure this project raises on purpose."""


class HTTPFailure(SyncError):
    """A request that did not get the answer the API promises."""

    def __init__(self, message: str, *, method: str, path: str, status: int | None) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status

    @property
    def system(self) -> str:
        """Which peer ("Novi", "Mailman"): every message of ours starts with its name (tasks.http)."""
        return str(self).split(":", 1)[0]


class TransientHTTPError(HTTPFailure):
    """Worth retrying: 429, 5xx, a timeout or a refused connection."""

    def __init__(self, message: str, *, method: str, path: str, status: int | None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, method=method, path=path, status=status)
        self.retry_after = retry_after


class PermanentHTTPError(HTTPFailure):
    """Retrying cannot help: a 4xx other than 429."""


class CredentialsRefused(PermanentHTTPError):
    """401/403: the API key or password was refused."""


class LedgerError(SyncError):
    """The ledger could not be read or written, or is of a schema this release cannot use."""


class BlockNotFound(SyncError):
    """A block named in a run's parameters is not saved on the Prefect server the run talks to."""


class PrefectUnreachable(SyncError):
    """The Prefect server the blocks live on does not answer."""


class ListNotFound(SyncError):
    """A list named in the rules does not exist on the Mailman server."""


class UnsupportedMailman(SyncError):
    """The Mailman core is older than the oldest one this tool can work with."""


class UnexpectedResponse(SyncError):
    """A 2xx whose body is not what the API documents (an HTML page, a wrong envelope)."""


class IncompleteSweep(SyncError):
    """A paged read that cannot be trusted to be whole; nothing may be planned from it."""


class ReadStopped(SyncError):
    """A read given up because another read of the same run failed (tasks.http.halting): the
    run fails with that one's error, and nothing is planned from part of the sources."""


class RulesError(SyncError):
    """The routing rules file is missing or invalid."""


class BadParameter(SyncError, ValueError):
    """A flow parameter out of its range or form (the UI's form and the CLI check them first)."""


class GuardRefused(SyncError):
    """A safety guard stopped the run before any write."""

    def __init__(self, message: str, summary: dict | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class ChangesFailed(SyncError):
    """Some planned changes failed after retries; the run must end Failed."""

    def __init__(self, message: str, summary: dict | None = None) -> None:
        super().__init__(message)
        self.summary = summary


def is_transient(exc: BaseException) -> bool:
    """Whether a retry could succeed where this attempt failed."""
    return isinstance(exc, TransientHTTPError)


def what_now(error: SyncError, blocks: dict[str, str]) -> str:
    """What the operator does about a peer's failure that stopped a run before it wrote anything:
    the sentence the run's message ends with (other errors say it themselves). `blocks` names
    each peer's block as the run used it, e.g. {"Novi": "NoviCredentials block 'novi'"}."""
    if isinstance(error, HTTPFailure):
        block = blocks.get(error.system, f"{error.system} block")
        if isinstance(error, CredentialsRefused):
            what = "API key" if error.system == "Novi" else "username and password"
            return (f"Nothing was written. Put the right {what} in the {block} (Prefect UI → Blocks, or "
                    "`novi-mailman blocks`), then Retry this run.")
        if isinstance(error, TransientHTTPError):
            return (f"Nothing was written. Retry this run once {error.system} answers again; the next scheduled "
                    "run tries again too.")
        return f"Nothing was written. Check the URL in the {block}, then Retry this run."
    if isinstance(error, (IncompleteSweep, UnexpectedResponse)):
        return "Nothing was written: nothing is planned from a partial read. Retry this run."
    return ""
