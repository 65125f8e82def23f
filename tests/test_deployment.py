"""prefect.yaml and the example rules stay consistent with the code they point to."""

import inspect
from pathlib import Path

import yaml

from flows.sync import sync_lists
from tasks.core.rules import load_rules

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


def test_the_multi_association_example_deploys_each_association_on_its_own():
    """examples/multi-association/prefect.yaml: valid flows and parameters, one ledger and one
    pair of deployments per association, every deployment limited to one run at a time."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.member import sync_member

    config = yaml.safe_load((ROOT / "examples" / "multi-association" / "prefect.yaml").read_text())
    flows = {"flows/sync.py:sync_lists": sync_lists, "flows/member.py:sync_member": sync_member}
    by_association: dict[str, list[dict]] = {}
    for deployment in config["deployments"]:
        flow = flows[deployment["entrypoint"]]
        given_per_run = {"member_ids": []} if flow is sync_member else {}  # the relay passes them
        flow.validate_parameters({**given_per_run, **deployment["parameters"]})  # raises on a wrong one
        assert deployment["concurrency_limit"] == 1 and deployment["work_pool"]["name"] == "novi-mailman"
        (association,) = deployment["tags"]
        assert deployment["name"].startswith(f"{association}-")
        by_association.setdefault(association, []).append(deployment)
    assert len(by_association) == 3 and len({d["name"] for d in config["deployments"]}) == 6

    crons = []
    for association, deployments in by_association.items():
        nightly, member = sorted(deployments, key=lambda d: d["entrypoint"], reverse=True)
        assert nightly["entrypoint"].endswith("sync_lists") and member["entrypoint"].endswith("sync_member")
        assert nightly["parameters"]["dry_run"] is False and "schedules" not in member
        for key in ("rules_path", "novi_block", "mailman_block", "ledger_block"):  # the two runs agree
            assert nightly["parameters"][key] == member["parameters"][key]
        assert association in nightly["parameters"]["rules_path"]
        (schedule,) = nightly["schedules"]
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
        crons.append((schedule["cron"], schedule["timezone"]))
    assert len(set(crons)) == len(crons)  # spread over the night
    for key in ("novi_block", "ledger_block", "rules_path"):  # never shared between associations
        values = [ds[0]["parameters"][key] for ds in by_association.values()]
        assert len(set(values)) == len(values), key
