"""prefect.yaml and the example rules stay consistent with the code they point to."""

import inspect
from pathlib import Path

import yaml

from flows.sync import sync_lists
from tasks.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent


def test_nightly_deployment_points_at_the_flow_with_valid_parameters():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (deployment,) = [d for d in config["deployments"] if d["name"] == "nightly-full-sync"]
    path, name = deployment["entrypoint"].split(":")
    assert (ROOT / path).exists() and name == sync_lists.fn.__name__
    accepted = set(inspect.signature(sync_lists.fn).parameters)
    assert set(deployment["parameters"]) <= accepted
    assert deployment["parameters"]["dry_run"] is False
    assert deployment["concurrency_limit"] == 1
    assert deployment["schedules"][0]["cron"].count(" ") == 4
    assert deployment["work_pool"]["name"]


def test_example_rules_are_valid():
    rules = load_rules(ROOT / "rules.example.yaml")
    assert [r.list_id for r in rules.lists] == ["members.example.org", "board.example.org"]
    assert rules.lists[1].lapsed == "hold" and rules.lists[0].lapsed == "unsubscribe"


def test_member_deployment_points_at_the_member_flow():
    from flows.member import sync_member

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (deployment,) = [d for d in config["deployments"] if d["name"] == "webhook-member-sync"]
    path, name = deployment["entrypoint"].split(":")
    assert (ROOT / path).exists() and name == sync_member.fn.__name__
    assert set(deployment["parameters"]) <= set(inspect.signature(sync_member.fn).parameters)
    assert deployment["concurrency_limit"] == 1 and "schedules" not in deployment
