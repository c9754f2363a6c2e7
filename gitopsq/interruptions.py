"""Why a node ended without succeeding: the provider took it back (a spot interruption), or it
was lost. Both are the `interruption` retry event; the message says which.

The provider says so by the instance's state reason (`Provider.interruption`, asked once, when
the node is gone); the node says so itself by the notice it read from the metadata endpoint,
POSTed to the controller in the two minutes EC2 gives (`record_notice`, an event row of the
attempt). A node that was told it is taken back and then ends with a failing exit code (killed
by the shutdown) is interrupted, not failed.
"""

from __future__ import annotations

import json

from gitopsq.nodetoken import is_current_attempt
from gitopsq.store import Store

NOTICE = "interruption-notice"  # the event kind of a node's notice
LOST = "node lost: it ended without reporting an exit code"
NOTICE_FIELDS = ("action", "time")  # what is kept of EC2's instance-action document


def record_notice(store: Store, submission_id: int, token: str, notice: dict, now: float) -> bool:
    """A node's interruption notice, once per attempt; only with its attempt's token, while it runs."""
    sub = store.submission(submission_id)
    if not is_current_attempt(sub, token) or sub["status"] not in ("provisioning", "running"):
        return False
    if noticed(store, submission_id, sub["attempts"]) is None:
        kept = {k: str(notice[k])[:100] for k in NOTICE_FIELDS if isinstance(notice.get(k), (str, int, float))}
        with store.transaction():
            store.event(sub["run"], submission_id, NOTICE, {"attempt": sub["attempts"], **kept}, None, now)
    return True


def noticed(store: Store, submission_id: int, attempt: int) -> dict | None:
    """The notice the node of this attempt sent, or None."""
    for row in store.conn.execute("SELECT detail FROM events WHERE submission_id = ? AND kind = ? ORDER BY id DESC",
                                  (submission_id, NOTICE)):
        detail = json.loads(row["detail"])
        if detail.get("attempt") == attempt:
            return detail
    return None


def message(notice: dict | None, taken: str | None) -> str:
    """What ended the node: the provider's reason, else the node's notice, else lost."""
    if taken:
        return taken
    if notice is not None:
        when = f" at {notice['time']}" if notice.get("time") else ""
        return f"spot interruption (notice: {notice.get('action', 'interruption')}{when})"
    return LOST
