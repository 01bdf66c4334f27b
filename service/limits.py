"""Per-user limits on what a submission or an extension may queue (docs/security.md says why).

* ``DECOUPLE_MAX_TRIAL_EPOCHS``: trials x epochs of one study (422 naming ``epochs``), so that one
  spec cannot ask for months of compute within the trial cap (19,968 trials of 10,000 epochs).
* ``DECOUPLE_MAX_QUEUED_TRIALS``: trials one non-admin user may have queued or running at once,
  over all their studies (429 with the numbers); admins are exempt.
* ``priority`` above 0 jumps the queue: admins only (403).

The queue count runs in the submitting transaction. On SQLite write transactions are serialized
(``BEGIN IMMEDIATE``); on PostgreSQL a transaction-scoped advisory lock per owner serializes one
user's submissions, so two concurrent requests cannot both slip under the limit.
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from service.config import Settings
from service.errors import Forbidden, InvalidInput, QuotaExceeded
from service.models import Study, Trial
from service.store import Principal

#: Study states whose unfinished trials count against the owner's queue limit.
ACTIVE = ("queued", "running")


def check_trial_epochs(trials: int, epochs: int, settings: Settings) -> None:
    """422 when ``trials`` x ``epochs`` is over ``DECOUPLE_MAX_TRIAL_EPOCHS``."""
    if trials * epochs > settings.max_trial_epochs:
        raise InvalidInput(
            "epochs",
            f"{trials:,} trials x {epochs:,} epochs = {trials * epochs:,} trial-epochs, more than "
            f"DECOUPLE_MAX_TRIAL_EPOCHS={settings.max_trial_epochs:,}",
        )


def check_priority(priority: int, who: Principal) -> None:
    """403 for a priority above 0 from a non-admin: it would put their work ahead of everyone's."""
    if priority > 0 and not who.admin:
        raise Forbidden(f"priority: {priority} is above 0, which only an admin may set")


def queued_trials(session: Session, owner: str, *, exclude: str | None = None) -> int:
    """Trials of ``owner``'s queued or running studies that are not finished yet (grid trials an
    ``auto`` axis has not created yet included: ``trials_total`` counts them)."""
    studies = [Study.owner == owner, Study.status.in_(ACTIVE)]
    if exclude is not None:
        studies.append(Study.id != exclude)
    total = session.scalar(select(func.coalesce(func.sum(Study.trials_total), 0)).where(*studies)) or 0
    finished = session.scalar(
        select(func.count()).select_from(Trial).join(Study, Study.id == Trial.study_id)
        .where(*studies, Trial.phase == "grid", Trial.status.in_(("done", "failed")))
    ) or 0
    return int(total) - int(finished)


def check_queue(session: Session, owner: str, adding: int, who: Principal, settings: Settings,
                *, exclude: str | None = None) -> None:
    """429 when ``owner`` would have more than ``DECOUPLE_MAX_QUEUED_TRIALS`` trials queued or
    running after ``adding`` more; nothing for an admin. Call inside the writing transaction."""
    if who.admin:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:owner))"), {"owner": "decouple-queue:" + owner})
    have = queued_trials(session, owner, exclude=exclude)
    if have + adding > settings.max_queued_trials:
        raise QuotaExceeded(
            f"{owner} has {have:,} trials queued or running; {adding:,} more would make "
            f"{have + adding:,}, over DECOUPLE_MAX_QUEUED_TRIALS={settings.max_queued_trials:,}"
        )
