"""Approval of a refused plan from the Prefect UI: a deployment run that a guard refused waits,
paused, for an operator's answer in the run's Resume form.

Pausing (not suspending) was chosen: a suspended run leaves its process and starts the flow
again from the top when resumed, which needs every result before it persisted; a paused run
keeps its process, its clients and its place. The lists' lock is released while it waits (see
flows/sync.py), so member runs go on, and approving re-reads both sides and plans again: the
plan is applied only if its fingerprint is the one approved.
"""

from __future__ import annotations

from prefect import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from prefect.states import Running
from pydantic import Field

POLL_S = 5  # how soon an answer given in the UI is seen


class Approval(RunInput):
    """The Resume form of a refused run: the description above it shows the refused figures."""

    approve: bool = Field(False, description="Tick to apply the plan shown above. It is planned again first and "
                                             "applied only if it is still the same plan (same fingerprint). "
                                             "Leave unticked to reject: the run ends Refused.")


def can_wait() -> bool:
    """Only a deployment run can wait: nobody stands at a command line's process for hours."""
    return deployment.id is not None


def await_approval(tripped: list[str], plan_fingerprint: str, wait_s: int, command: str,
                   approved: str | None = None) -> bool | None:
    """Pause until an operator answers: True approved, False rejected, None no answer in `wait_s`.
    The form shows the guards that tripped, with their figures (`tripped`), the plan's fingerprint,
    and, when an approved plan moved before it could be applied, that this one is another plan."""
    hours = f"{wait_s / 3600:.3g} h" if wait_s >= 3600 else f"{wait_s} s"
    found = "\n".join(f"- {sentence}" for sentence in tripped)
    moved = (f"**The plan changed since plan `{approved}` was approved (the data moved): this is another plan.**"
             "\n\n" if approved and approved != plan_fingerprint else "")
    description = (f"## Approve plan `{plan_fingerprint}`?\n\n{moved}A safety guard refused it; nothing was written "
                   f"to any list.\n\n{found}\n\nThe run's artifacts show this plan: the summary, and every change "
                   f"per list. Without an answer in {hours} the run ends Refused. The same from a shell: "
                   f"`{command} --approve {plan_fingerprint}`")
    form = Approval.with_initial_data(description=description, approve=False)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=wait_s, poll_interval=POLL_S)
    except FlowPauseTimeout:
        # Past its pause's deadline the server turns any state the run proposes into "Failed:
        # the flow was paused and never resumed" (core_policy.py). The run takes its state back
        # so that it ends as what it is: Refused, with its figures.
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.get_id(), Running(message="No approval in time"), force=True)
        return None
    return bool(answer.approve)
