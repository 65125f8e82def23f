"""Approval of a refused plan from the Prefect UI: a deployment run that a guard refused waits,
paused, for an operator's answer in the run's Resume form.

Pausing (not suspending) was chosen: a suspended run leaves its process and starts the flow
again from the top when resumed, which needs every result before it persisted; a paused run
keeps its process, its clients and its place. The lists' lock is released while it waits (see
flows/sync.py), so member runs go on, and approving re-reads both sides and plans again: the
plan is applied only if its fingerprint is the one approved.

The wait is ours, not `pause_flow_run`'s, for three reasons seen on Prefect 3.9.1 under a real
worker: the deployment's concurrency slot (see `DeploymentSlot`), a server too busy to answer
one poll (Prefect's loop ends the run; ours waits on), and a wait that says what it waits for
(the paused state's message, and the logs every hour).
"""

from __future__ import annotations

import inspect
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from uuid import UUID

import httpx
from prefect import get_client, get_run_logger
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.exceptions import PrefectHTTPStatusError
from prefect.input import keyset_from_paused_state
from prefect.input.run_input import RunInput
from prefect.runtime import deployment, flow_run
from prefect.states import Paused, Running
from prefect.utilities.engine import propose_state_sync
from pydantic import Field

POLL_S = 5  # how soon an answer given in the UI is seen
PROGRESS_S = 3600  # how often a waiting run says it still waits
LEASE_S = 300  # the deployment slot's lease, renewed at 3/4 of it, as Prefect's engine does


class Approval(RunInput):
    """The Resume form of a refused run: the description above it shows the refused figures."""

    approve: bool = Field(False, description="Tick to apply the plan shown above. It is planned again first and "
                                             "applied only if it is still the same plan (same fingerprint). "
                                             "Leave unticked to reject: the run ends refused.")


def can_wait() -> bool:
    """Only a deployment run can wait: nobody stands at a command line's process for hours."""
    return deployment.id is not None


class DeploymentSlot:
    """The deployment's concurrency slot (`concurrency_limit: 1`), kept while the run waits.

    Prefect 3.9.1's server releases a deployment run's slot when the run pauses, while the flow
    engine goes on renewing the released lease; the first renewal after the pause (at most
    225 s into the run) is answered 410 and the engine cancels the run: a refused nightly run
    ended Crashed four minutes after it paused. On pausing, the run stops the engine's renewal of
    the lease the server released and takes the slot again under a lease of its own, renewed
    until the flow ends and released just before: a second run of the deployment waits for it
    (AwaitingConcurrencySlot) as it would for a running one. Used as a context around the flow's
    attempts, so the slot is given back however the flow ends; a killed process's lease lapses
    in `LEASE_S`.
    """

    def __init__(self) -> None:
        self._held = ExitStack()
        self._lease: UUID | None = None

    def __enter__(self) -> DeploymentSlot:
        return self

    def __exit__(self, *exc) -> None:
        self._held.close()
        self._lease = None

    def retake(self, client, released: UUID | None) -> None:
        """After a pause: the slot again, under a lease of this run's own. `released` is the
        engine's lease the pause released; a run resumed before holds its own lease instead,
        whose slot that pause gave back too (the server frees a slot on every pause)."""
        if released is None and self._lease is None:  # no deployment limit: nothing was held
            return
        logger = get_run_logger()
        if released is not None and not _stop_engine_renewal(released):
            logger.warning("Could not stop Prefect's renewal of the slot the pause released; if this run ends "
                           "Crashed in the next minutes, see README 'Refusals and approval'.")
        self.__exit__()
        try:
            answer = client.increment_concurrency_slots_with_lease(
                names=[f"deployment:{deployment.id}"], slots=1, mode="concurrency", lease_duration=LEASE_S,
                holder=ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run.id)))
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423: the limit is full
                raise
            logger.warning("Another run of this deployment started while this one paused and holds its slot; "
                           "the lists' lock still keeps the two from writing one list at once.")
            return
        self._lease = UUID(answer.json()["lease_id"])
        self._held.callback(_release, self._lease)
        self._held.enter_context(maintain_concurrency_lease(self._lease, LEASE_S))


def _stop_engine_renewal(lease: UUID) -> bool:
    """Stop the flow engine's renewal of `lease` (a thread Prefect names after it), as the engine
    itself does when the run ends. Prefect offers no handle to it, so its stop event is found in
    the thread's function (prefect/concurrency/_leases.py); False where that shape changed, which
    tests/integration/test_approval.py would show."""
    for thread in threading.enumerate():
        if thread.name == f"concurrency-lease-renewal-{lease}":
            try:
                loop = inspect.getclosurevars(thread._target).nonlocals["_run_with_failure_handler"]
                inspect.getclosurevars(loop).nonlocals["stop_event"].set()
            except (AttributeError, KeyError, TypeError):
                return False
            return True
    return False


def _release(lease: UUID) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.release_concurrency_slots_with_lease(lease)
        except (httpx.HTTPError, PrefectHTTPStatusError) as exc:  # it lapses by itself in LEASE_S
            get_run_logger().warning(f"Could not give back the deployment's slot ({exc}); it frees itself within "
                                     f"{LEASE_S // 60} minutes.")


def await_approval(tripped: list[str], plan_fingerprint: str, *, wait_s: int, command: str, slot: DeploymentSlot,
                   approved: str | None = None) -> bool | None:
    """Pause until an operator answers: True approved, False rejected, None no answer in `wait_s`.
    The form shows the guards that tripped, with their figures (`tripped`), the plan's fingerprint,
    and, when an approved plan moved before it could be applied, that this one is another plan."""
    logger = get_run_logger()
    hours = _duration(wait_s)
    found = "\n".join(f"- {sentence}" for sentence in tripped)
    moved = (f"**The plan changed since plan `{approved}` was approved (the data moved): this is another plan.**"
             "\n\n" if approved and approved != plan_fingerprint else "")
    description = (f"## Approve plan `{plan_fingerprint}`?\n\n{moved}A safety guard refused it; nothing was written "
                   f"to any list.\n\n{found}\n\nThe run's artifacts show this plan: the summary, and every change "
                   f"per list. Without an answer in {hours} the run ends refused. The same from a shell: "
                   f"`{command} --approve {plan_fingerprint}`")
    form = Approval.with_initial_data(description=description, approve=False)
    until = datetime.now(timezone.utc) + timedelta(seconds=wait_s)
    why = (f"Waiting for approval of plan {plan_fingerprint} until {until:%Y-%m-%d %H:%M} UTC: "
           f"{tripped[0] if tripped else 'a guard refused it'} Resume this run and tick approve to apply it; "
           f"nothing was written.")
    # A key of its own every time: a key seen before would hand back that earlier answer at once.
    paused = Paused(timeout_seconds=wait_s, pause_key=f"approval-{uuid.uuid4().hex[:12]}", message=why)
    keyset = keyset_from_paused_state(paused)
    paused.state_details.run_input_keyset = keyset
    run_id = UUID(flow_run.id)
    with get_client(sync_client=True) as client:
        released = client.read_flow_run(run_id).state.state_details.deployment_concurrency_lease_id
        state = propose_state_sync(client, paused, flow_run_id=run_id)
        if not state.is_paused():
            raise RuntimeError(f"Prefect did not let the run pause: {state.type.value} {state.message or ''}")
        form.save(keyset)
        slot.retake(client, released)
        logger.info(f"Paused: {why}")
        if _resumed(client, run_id, until, plan_fingerprint, logger):
            return bool(form.load(keyset).approve)
        # Past its pause's deadline the server turns any state the run proposes into "Failed:
        # the flow was paused and never resumed" (core_policy.py). The run takes its state back
        # so that it ends as what it is: refused, with its figures.
        client.set_flow_run_state(run_id, Running(message="No approval in time"), force=True)
    return None


def _resumed(client, run_id: UUID, until: datetime, plan_fingerprint: str, logger) -> bool:
    """Wait until the run is resumed (True) or `until` passes (False). A poll the server does not
    answer is said once and tried again: a busy server is no reason to lose a night's approval."""
    next_word = time.monotonic() + PROGRESS_S
    unanswered = False
    while True:
        try:
            if client.read_flow_run(run_id).state.is_running():
                logger.info("Resumed by the operator.")
                return True
            unanswered = False
        except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
            if not unanswered:
                logger.warning(f"The Prefect server did not answer ({type(exc).__name__}); still waiting.")
            unanswered = True
        left = (until - datetime.now(timezone.utc)).total_seconds()
        if left <= 0:
            return False
        if time.monotonic() >= next_word:
            logger.info(f"Still waiting for approval of plan {plan_fingerprint}: {_duration(left)} left.")
            next_word += PROGRESS_S
        time.sleep(min(POLL_S, left))


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 \
        else f"{seconds:.0f} s"
