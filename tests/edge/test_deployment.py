"""prefect.yaml and the example rules stay consistent with the code they point to."""

import inspect
from pathlib import Path

import pytest
import yaml

from flows.sync import sync_lists
from tasks.core.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]


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
    assert [r.list_id for r in rules.lists] == ["members.example.org", "board.example.org", "finance.example.org",
                                                "north.example.org", "company-contacts.example.org",
                                                "all-members.example.org"]
    assert rules.lists[1].lapsed == "hold" and rules.lists[0].lapsed == "unsubscribe"
    assert rules.lists[0].digest.email_block == "membership-smtp"
    assert rules.lists[2].committees == ["finance committee"] and rules.lists[2].statuses == "any"
    assert rules.lists[2].moderators_from_positions == ["chair"]
    assert rules.lists[3].custom_fields == {"Chapter": ["north"]}
    assert rules.lists[4].contacts_of_companies == ["primary", "billing"] and rules.lists[5].inheriting == "include"


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


def deployment_of(entrypoint: str) -> dict:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (deployment,) = [d for d in config["deployments"] if d["entrypoint"] == entrypoint]
    assert (ROOT / entrypoint.split(":")[0]).exists()
    return deployment


def test_no_deployment_is_named_like_its_flow():
    """The UI shows flow/deployment: "address-history/address-history" said the name twice and
    nothing about the deployment (issue 29)."""
    import importlib

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        assert deployment["name"] != flow.name, deployment["name"]


@pytest.mark.parametrize("flow_name", ["address_history", "list_history"])
def test_the_history_deployments_point_at_their_flows(flow_name):
    import flows.history

    deployment = deployment_of(f"flows/history.py:{flow_name}")
    assert deployment["name"] == "on-demand"
    assert "schedules" not in deployment and deployment["work_pool"]["name"] == "novi-mailman"
    asked = {"address_history": {"address": "a@example.org"}, "list_history": {"list_id": "m@example.org"}}[flow_name]
    getattr(flows.history, flow_name).validate_parameters({**asked, **deployment.get("parameters", {})})


def test_the_undo_deployment_points_at_its_flow_and_looks_first():
    from flows.undo import undo_run

    deployment = deployment_of(f"flows/undo.py:{undo_run.fn.__name__}")
    undo_run.validate_parameters({"run": "some-run", **deployment["parameters"]})
    assert deployment["parameters"]["dry_run"] is True and "schedules" not in deployment


def test_every_flow_parameter_has_a_description_the_ui_form_shows():
    from flows.history import address_history, list_history
    from flows.member import sync_member
    from flows.undo import undo_run

    for flow in (sync_lists, sync_member, address_history, list_history, undo_run):
        properties = flow.parameters.model_dump()["properties"]
        assert properties and all(p.get("description") for p in properties.values()), flow.name
    sync = sync_lists.parameters.model_dump()["properties"]
    assert (sync["batch_size"]["minimum"], sync["batch_size"]["maximum"]) == (1, 500)
    assert (sync["workers"]["minimum"], sync["workers"]["maximum"]) == (1, 8)


def test_a_demo_deployment_file_sets_only_the_parameters_each_flow_takes(tmp_path):
    from sandbox.deploy import deployment_file

    written = yaml.safe_load(deployment_file(tmp_path / "p.yaml", {"rules_path": "x.yaml"}, pool="p", suffix="-t",
                                             schedules=False).read_text())
    by_flow = {d["entrypoint"].split(":")[1]: d for d in written["deployments"]}
    assert by_flow["sync_lists"]["name"] == "nightly-full-sync-t"
    assert by_flow["sync_lists"]["parameters"]["rules_path"] == "x.yaml"
    assert by_flow["sync_member"]["parameters"]["rules_path"] == "x.yaml"
    assert not by_flow["address_history"].get("parameters")
    assert all(d["work_pool"]["name"] == "p" and "schedules" not in d for d in written["deployments"])
