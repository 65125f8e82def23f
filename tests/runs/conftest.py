"""Fixtures of the sync-run tests: the credential blocks saved once per module, retries without waiting."""

from __future__ import annotations

import pytest

import tasks.run as run_module
from tasks.blocks import MailmanCredentials, NoviCredentials
from tasks.mailman import apply_batch
from tests.fakes import MAILMAN_REST, NOVI_SITE
from tests.runs.sync_harness import MAILMAN_PASSWORD, NOVI_KEY


@pytest.fixture(scope="module")
def blocks(prefect_server):
    NoviCredentials(site_url=f"{NOVI_SITE}/api/", api_key=NOVI_KEY).save("test-novi", overwrite=True)
    MailmanCredentials(rest_url=MAILMAN_REST, password=MAILMAN_PASSWORD).save("test-mailman", overwrite=True)


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(run_module, "apply_batch", apply_batch.with_options(retry_delay_seconds=0))

