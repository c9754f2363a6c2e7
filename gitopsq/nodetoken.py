"""The token a node proves itself with: one per attempt of a submission, not one per submission.

The submission keeps one random secret (its `token` column); each attempt's node gets
HMAC-SHA256(secret, "attempt:N") in its user-data. So a report captured from attempt 1 (in a
log, on a node that lived on after a network partition) is refused while attempt 2 runs, and
nothing but the submission's secret has to be stored.
"""

from __future__ import annotations

import hashlib
import hmac


def attempt_token(submission_token: str, attempt: int) -> str:
    """The token of attempt `attempt` (the submission's `attempts` when it was launched)."""
    return hmac.digest(submission_token.encode(), f"attempt:{attempt}".encode(), hashlib.sha256).hex()


def is_current_attempt(submission, token: str) -> bool:
    """True when `token` is the token of the submission's current attempt (compared in constant time)."""
    if submission is None or not submission["token"]:
        return False
    expected = attempt_token(submission["token"], submission["attempts"] or 0)
    return hmac.compare_digest(expected.encode(), token.encode("utf-8", errors="surrogatepass"))
