"""One idempotent controller step: git -> plan -> store -> queue -> provider -> store.

The only place that sequences side effects. Each sub-step reads the store, decides (with the
pure `plan` and `queue` modules) and records its intent in a transaction *before* calling the
provider, so a crash at any point is repaired by the next start: half-done launches are
adopted or rolled back, nodes nobody owns are destroyed, stops are finished.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from gitopsq import intents
from gitopsq import interruptions
from gitopsq import queue as q
from gitopsq.clusterruns import ClusterRuns
from gitopsq.config import CONFIG_FILE
from gitopsq.desired import AppliedConfig, FileRow, read_tree
from gitopsq.launchinputs import LaunchInputs
from gitopsq.nodetoken import attempt_token, is_current_attempt
from gitopsq.plan import ACTIVE, Action, absent, held, plan
from gitopsq.providers.base import AUTH, CAPACITY, ERROR, THROTTLE, UNSATISFIABLE, Launch, NodeStatus, Provider, ProviderError
from gitopsq.source import ConfigRepo
from gitopsq.spec import RunSpec
from gitopsq.store import Store
from gitopsq.workspace import WorkspaceError
from gitopsq.yamlload import Problem

log = logging.getLogger("gitopsq.controller")

POLL_INTERVAL = 1.0  # while nodes run: how often to look at them
SYNC_CHUNK = 500  # runs planned and recorded at a time by sync_git (see there)
# First decisions (fail the unsatisfiable, open a retry window) taken in one step besides the head
# of the queue's: after a first sync of 10,000 runs, the steps that take them stay short, so a
# commit pushed meanwhile is reconciled at once, not after a second of bookkeeping.
FIRST_DECISIONS_PER_STEP = 500
# Final status for each reason a submission was stopped by gitopsq.
STOP_OUTCOME = {
    "deleted": "cancelled",
    "replaced": "cancelled",
    "max-duration-exceeded": "failed",
    "inactivity-duration-exceeded": "done",
    "stopped": "cancelled",  # gitopsq stop (gitopsq.intents)
    "rerun": "cancelled",  # gitopsq rerun of an active run: replaced by its new submission
}


def _name_chunks(names: set[str], size: int):
    """The names in order, `size` at a time."""
    ordered = sorted(names)
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


class StepFailed(Exception):
    """Sub-steps of a step failed (the others ran): (where, exception) pairs, and the step's result."""

    def __init__(self, failures: list[tuple[str, Exception]], result: "StepResult"):
        self.failures, self.result = failures, result
        super().__init__("; ".join(f"{where}: {type(exc).__name__}: {exc}" for where, exc in failures))


@dataclass
class StepResult:
    commit: str | None = None
    actions: list = field(default_factory=list)
    launched: list[int] = field(default_factory=list)
    next_wake: float | None = None


class _Queued(NamedTuple):
    """What admission derives from a queued submission's row, kept while the row is unchanged."""

    values: tuple  # the row's values it was derived from (any of them changed: derived again)
    spec: RunSpec
    secrets: frozenset[str]
    waiting: q.Waiting


class Controller(ClusterRuns):
    def __init__(self, store: Store, provider: Provider, repo: ConfigRepo | None = None, branch: str = "main",
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 inputs: LaunchInputs | None = None):
        self.store = store
        self.inputs = inputs or LaunchInputs(store, repo)  # secrets and working trees of launches
        self.provider = provider
        self.repo = repo
        self.branch = branch
        self.clock = clock
        self.rng = rng or random.Random()
        self.recovered = False
        self._trouble: dict[str, str] = {}  # operation (list, launch, stop) -> its provider problem
        self.on_provider_error: Callable[[str], None] | None = None  # metrics hook: called with the kind
        self.last_commit: str | None = store.cursor(branch)
        self._tree = None  # the last reconciled tree (TreeState): the next commit patches it
        self._blocked_at: str | None = None  # a tip not reconciled for want of any valid .gitopsq.yml
        self._specs: dict[int, tuple[str, RunSpec]] = {}  # see _spec
        self._unsatisfiable: dict[int, str | None] = {}  # submission id -> why nothing here can run it (None: it fits)
        self._queued: dict[int, _Queued] = {}  # see _queued_entry
        self._floor: dict[str, int] | None = None  # what the smallest run needs of the provider (see _full)
        self._forget_at = 2048  # cache size at which _forget_finished prunes
        self._free_recorded: dict[str, int] | None = None  # the capacity_free last written (written only when it changes)
        self._known_secrets: set[str] | None = None  # secret names, read once per admission (see _missing_secrets)
        self._secret_waits: dict[int, list[str]] = {}  # submission id -> its missing secrets, this decision
        self._undecided = False  # the last admission left submissions without their first decision

    # --- the step -----------------------------------------------------------------------------

    def step(self, fetch: bool = False) -> StepResult:
        """One pass over everything. A sub-step that fails does not stop the others (a broken
        fetch or commit must not stop deadlines, node watching and admission); the failures are
        raised together at the end as StepFailed, which carries the result."""
        result = StepResult()
        if not self.recovered:
            self.recover()  # a failure here stops the step: admitting before recovery could launch twice
            self.recovered = True
        failures: list[tuple[str, Exception]] = []

        def attempt(where: str, sub_step: Callable):
            try:
                return sub_step()
            except Exception as exc:
                failures.append((where, exc))
                return None

        if self.repo is not None:
            synced = attempt("git", lambda: self._fetch_and_sync(fetch))
            if synced is not None:
                result.commit, result.actions = synced
                self.last_commit = result.commit or self.last_commit
        attempt("intents", self.apply_intents)  # after git: a commit that restarted a run makes its stop moot
        attempt("stops", self.finish_stops)
        attempt("nodes", self.poll_nodes)
        attempt("deadlines", self.enforce_deadlines)
        attempt("schedules", self.fire_schedules)
        result.launched = attempt("admission", self.admit_and_launch) or []
        attempt("stops", self.finish_stops)  # stops requested by this step's deadlines
        result.next_wake = attempt("timers", self.next_wake)
        attempt("caches", self._forget_finished)
        if failures:
            raise StepFailed(failures, result)
        return result

    def _fetch_and_sync(self, fetch: bool):
        if fetch:
            self.repo.fetch()
        return self.sync_git()

    def _forget_finished(self) -> None:
        """Keep the per-submission caches to the submissions still in play (a daemon runs for months)."""
        if len(self._specs) + len(self._unsatisfiable) + len(self._queued) < self._forget_at:
            return
        active = self.store.submission_ids_with_status(*ACTIVE)
        self._specs = {k: v for k, v in self._specs.items() if k in active}
        self._unsatisfiable = {k: v for k, v in self._unsatisfiable.items() if k in active}
        self._queued = {k: v for k, v in self._queued.items() if k in active}
        # Next time only when the caches have doubled again: amortised, not a full read per step.
        self._forget_at = max(2048, 2 * (len(self._specs) + len(self._unsatisfiable) + len(self._queued)))

    # --- git ----------------------------------------------------------------------------------

    def sync_git(self):
        """Bring the store to the branch tip: plan, and record actions, cursor and files in one transaction.

        Returns (the tip, or None when not reconciled; the actions done, as kind, run and file: their
        specs and changes are in the store and its events)."""
        tip = self.repo.tip()
        cursor = self.store.cursor(self.branch)
        if tip is None or tip == cursor:
            if tip is not None and self._tree is None:
                self._load_tree(tip)
            return tip, []  # a missing branch never means "cancel everything"
        if tip == self._blocked_at:
            return None, []  # already reported; only a new commit can change that
        previous = self._tree
        cache = previous.files if previous else self._stored_files()
        base = cursor if cursor and cache else None
        tree = read_tree(self.repo, tip, cache, base=base, previous=previous, last_good=self._last_good_config())
        tree.stored_specs = self.store.file_specs  # the rows of unchanged files hold no spec text: the store has it
        if tree.blocked:
            self._not_reconciled(tip, tree)
            return None, []
        # Only runs whose file changed can need an action: plan those, not all 10,000.
        affected = tree.touched_names(cache) | self.store.run_names_at(tree.touched)
        # Runs whose own file is broken while another file claims them are looked at every time,
        # so the reason they are held is shown for as long as it lasts.
        invalid = tree.invalid_files  # a set built from every problem: once per sync
        affected |= {name for name in self.store.run_names_at(invalid) if name in tree.valid}
        problems = tree.all_problems()
        done: list[Action] = []
        now = self.clock()
        with self.store.transaction():
            # A run's plan depends on its own file and record alone, so the runs are planned and
            # recorded a chunk at a time, in name order: a first sync of 10,000 never holds all
            # their decoded specs at once (that peak was most of the daemon's memory).
            for names in _name_chunks(affected, SYNC_CHUNK):
                actions, stuck = self._sync_runs(tree, names, invalid, tip, now)
                done += (Action(a.kind, a.run, a.file) for a in actions)  # what was done; the rest is in the store
                problems += stuck
            removed = [p for p in tree.touched if p not in tree.files]
            self.store.replace_files((tree.files[p].as_dict() for p in tree.touched if p in tree.files), removed)
            broke, fixed = self.store.replace_problems([p.as_dict() for p in problems], tip)
            if self.store.applied_config() != (tree.applied.key, tree.applied.text):
                self.store.set_applied_config(tree.applied.key, tree.applied.text)  # outlives its blob
            self.store.set_cursor(self.branch, tip, now)
            self.store.event(None, None, "reconciled", {"commit": tip, "actions": len(done), "parsed": tree.parsed,
                                                         "errors": len(problems)}, tip, now)
        tree.forget_spec_texts()  # written to the store above
        self._tree = tree  # only once committed: after a failed transaction the store is the truth
        self._blocked_at = None
        self._log_validity(tip, problems, broke, fixed)
        return tip, done

    def _sync_runs(self, tree, names: list[str], invalid: set[str], tip: str, now: float) -> tuple[list[Action], list[Problem]]:
        """Plan and record these runs of the tree (inside sync_git's transaction): their actions,
        and a problem for each run another file claims while its own file is broken."""
        desired = tree.desired_of(names)
        known = self.store.recorded(set(names))
        actions = plan(desired, invalid, known)
        gone = absent(desired, invalid, known)
        stuck = held(desired, invalid, known)
        for action in actions:
            self._apply_action(action, tip, now, tree.files[desired[action.run].file] if action.run in desired else None)
        # a submission's run row is written by its action, blob included: once, not twice per run
        written = {a.run for a in actions if a.kind in ("submit", "restart")}
        for name, want in desired.items():
            if name not in stuck and name not in written:
                self.store.upsert_run(name, want.file, want.blob, dict(want.spec), True, now, tree.files[want.file].spec)
        for name in gone:
            self.store.mark_absent(name, now)
        self._sync_schedules(desired, known, gone, now)
        return actions, [Problem(desired[name].file, 1, "name", why) for name, why in sorted(stuck.items())]

    def _load_tree(self, tip: str) -> None:
        """The tree at the cursor, from the file rows the store holds (nothing is parsed): loaded
        in a start's first step, so that the next commit patches it instead of reading them all
        (1.5 s at 100,000 files, where a commit takes 50 ms)."""
        stored = self._stored_files()
        if not stored:
            return
        tree = read_tree(self.repo, tip, stored, base=tip, last_good=self._last_good_config())
        if not tree.blocked:
            tree.stored_specs = self.store.file_specs
            self._tree = tree

    def _log_validity(self, tip: str, problems: list[Problem], broke: set[str], fixed: set[str]) -> None:
        """A line when a commit makes a file invalid (its runs keep their last valid spec), and when it is fixed."""
        first = {}
        for problem in problems:
            first.setdefault(problem.file, problem)
        for path in sorted(broke):
            runs = sorted(self.store.run_names_at({path}))
            keeps = f" (run {', '.join(runs)} keeps its last valid spec)" if runs else ""
            log.warning("%s is invalid since %s%s: %s", path, tip[:12], keeps, first[path])
        for path in sorted(fixed):
            log.info("%s is valid again at %s", path, tip[:12])

    def _last_good_config(self) -> AppliedConfig | None:
        """The .gitopsq.yml in force while the branch's is broken: the last valid one applied."""
        if self._tree is not None:
            return self._tree.applied
        stored = self.store.applied_config()
        return AppliedConfig.from_text(*stored) if stored else None

    def _not_reconciled(self, tip: str, tree) -> None:
        """No valid .gitopsq.yml was ever applied: change nothing, move no cursor, show why."""
        problems = tree.all_problems()
        log.warning("%s at %s is not valid and no valid one was applied before: nothing is reconciled until it is fixed",
                    CONFIG_FILE, tip[:12])
        with self.store.transaction():
            self.store.replace_problems([p.as_dict() for p in problems], tip)
            self.store.event(None, None, "not-reconciled", {"commit": tip, "errors": len(problems)}, tip, self.clock())
        self._blocked_at = tip

    def _stored_files(self) -> dict[str, FileRow]:
        """The run files of the last reconciled tree as the store has them (after a start)."""
        return {path: FileRow(**{**dict(row), "spec": None}) for path, row in self.store.files().items()}  # see forget_spec_texts

    def _apply_action(self, action, commit: str, now: float, row: FileRow | None = None) -> None:
        """row: the run's file as read (its blob is recorded with the run, its spec text reused)."""
        blob, text = (row.blob, row.spec) if row is not None else (None, None)
        store = self.store
        detail = {"file": action.file, "changes": {k: [o, n] for k, (o, n) in action.changes.items()}}
        if action.kind in ("submit", "restart") and action.spec.get("schedule"):
            self._apply_scheduled(action, detail, commit, now, blob, text)
        elif action.kind in ("submit", "restart"):
            if action.kind == "restart":
                self._stop(action.run, "replaced", commit, now)
            store.upsert_run(action.run, action.file, blob, dict(action.spec), True, now, text)
            sub_id = store.add_submission(action.run, dict(action.spec), commit, now, spec_text=text)
            store.event(action.run, sub_id, action.kind, detail, commit, now)
        elif action.kind == "update":
            current = store.current_submission(action.run)
            spec = RunSpec.from_dict(action.spec)  # a new retry policy moves a waiting run's deadline
            store.update_submission(current["id"], spec=text or json.dumps(dict(action.spec), sort_keys=True), priority=action.spec["priority"],
                                    deadline=_deadline(spec, current["window_start"]) if current["status"] == "queued" else current["deadline"])
            store.event(action.run, current["id"], "updated", detail, commit, now)
        elif action.kind == "cancel":
            self._stop(action.run, "deleted", commit, now)

    # --- schedules ------------------------------------------------------------------------------

    def _apply_scheduled(self, action, detail: dict, commit: str, now: float, blob: str | None, text: str | None) -> None:
        """A scheduled run's file is new or changed: a commit never starts it, its ticks do (with
        the spec current at each tick). A restart still stops the submission that is active."""
        if action.kind == "restart":
            self._stop(action.run, "replaced", commit, now)
        self.store.upsert_run(action.run, action.file, blob, dict(action.spec), True, now, text)
        nxt = q.next_tick(action.spec["schedule"], now)
        self.store.event(action.run, None, "scheduled", {**detail, "next_tick_at": nxt}, commit, now)

    def _sync_schedules(self, desired: dict, known: dict, gone: list[str], now: float) -> None:
        """Keep each run's next tick in step with its file: a new or changed schedule starts
        counting from now, a schedule removed or a file deleted ends it."""
        for name, want in desired.items():
            crons = tuple(want.spec.get("schedule") or ())
            have = known.get(name)
            before = tuple((have.spec or {}).get("schedule") or ()) if have else ()
            if not crons:
                if before:
                    self.store.set_next_tick(name, None)
            elif crons != before or not (have and have.present) or self.store.run(name)["next_tick_at"] is None:
                self.store.set_next_tick(name, q.next_tick(crons, now))
        for name in gone:
            self.store.set_next_tick(name, None)

    def fire_schedules(self) -> None:
        """Each scheduled run whose tick has come: a new submission of its current spec, or, while
        its previous one is still active, a skipped tick (an event). Ticks missed while the
        controller was down make one catch-up submission, not one each (queue.due_tick)."""
        now = self.clock()
        for run in self.store.due_schedules(now):
            spec = json.loads(run["spec"])
            crons = spec.get("schedule") or ()
            current = self.store.current_submission(run["name"])
            active = current is not None and current["status"] in ACTIVE
            tick = q.due_tick(crons, run["next_tick_at"], now, active) if crons else None
            with self.store.transaction():
                self.store.set_next_tick(run["name"], tick.next_at if tick else None)
                if tick is None:
                    continue
                detail = {"tick": tick.at, "next_tick_at": tick.next_at}
                if tick.missed_since is not None:
                    detail["missed_since"] = tick.missed_since  # down meanwhile: one submission for them all
                if tick.action == "skip":
                    detail["active"] = {"number": current["number"], "status": current["status"]}
                    self.store.event(run["name"], current["id"], "tick-skipped", detail, None, now)
                    log.info("%s: tick skipped, submission #%s is still %s", run["name"], current["number"], current["status"])
                    continue
                sub_id = self.store.add_submission(run["name"], spec, self.store.cursor(self.branch), now)
                self.store.event(run["name"], sub_id, "tick", detail, None, now)

    def _stop(self, run: str, reason: str, commit: str | None, now: float, by: str | None = None) -> None:
        """Record the intent to stop a run's active submission; the node is stopped in finish_stops.

        by: who stopped it by hand (gitopsq stop or rerun), None for a commit or a deadline."""
        current = self.store.current_submission(run)
        if current is None or current["status"] not in ("queued", "provisioning", "running"):
            return
        who = {"stopped_by": by} if by else {}
        detail = {"by": by} if by else None
        if current["status"] == "queued":
            self.store.set_status(current["id"], STOP_OUTCOME[reason], now, reason=reason, commit=commit, detail=detail, **who)
        else:
            self.store.set_status(current["id"], "stopping", now, reason=reason, commit=commit, stop_reason=reason,
                                  detail=detail, **who)

    # --- stop and rerun, as asked by hand -----------------------------------------------------

    def apply_intents(self) -> None:
        """Apply `gitopsq stop` and `rerun` in the order asked, each in a transaction with its outcome."""
        for intent in intents.pending(self.store):
            now = self.clock()
            with self.store.transaction():
                outcome = self._apply_intent(intent, now)
                intents.finish(self.store, intent, outcome, now)
            log.info("%s %s, asked by %s (%s): %s", intent.kind, intent.run, intent.actor, intent.via, outcome)

    def _apply_intent(self, intent: intents.Intent, now: float) -> str:
        current = self.store.current_submission(intent.run)
        active = current is not None and current["status"] in ("queued", "provisioning", "running")
        if intent.kind == intents.STOP:
            if not active or current["id"] != intent.submission_id:
                return "nothing to stop: that submission has ended or was replaced since"
            self._stop(intent.run, "stopped", None, now, by=intent.actor)
            return f"stopped submission {current['number']}"
        run = self.store.run(intent.run)
        if run is None or not run["present"] or not run["spec"]:
            return "not rerun: its file is gone from the branch"
        if active:
            self._stop(intent.run, "rerun", None, now, by=intent.actor)
        commit = self.store.cursor(self.branch)  # the commit the current spec was read at
        sub_id = self.store.add_submission(intent.run, json.loads(run["spec"]), commit, now, submitted_by=intent.actor)
        number = self.store.submission(sub_id)["number"]
        replaced = {"replaces": current["number"]} if active else {}
        self.store.event(intent.run, sub_id, "rerun", {"by": intent.actor, "via": intent.via, **replaced}, commit, now)
        return f"submitted submission {number}" + (f" (submission {current['number']} stopped)" if active else "")

    # --- recovery -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Finish or roll back what a crash interrupted; adopt our nodes, destroy orphans."""
        try:
            nodes = self.provider.nodes()
        except ProviderError as exc:
            self._provider_trouble(exc, "list")
            return
        by_sub = {n.submission_id: n for n in nodes if n.submission_id is not None}
        self.inputs.clear_staging()  # trees staged for launches the crash interrupted
        now = self.clock()
        for sub in self.store.submissions_with_status("provisioning"):
            if self._spec(sub).nodes > 1:
                self._recover_gang(sub, [n for n in nodes if n.submission_id == sub["id"]], now)
                continue
            node = by_sub.get(sub["id"])
            with self.store.transaction():
                if node is not None and not node.lost:
                    started = sub["started_at"] or _when(node.started_at, None, now)
                    self.store.set_status(sub["id"], "running", now, node_id=node.node_id, started_at=started,
                                          log_path=node.log_path, workdir=node.workdir, window_start=now,
                                          detail={"adopted": node.node_id, "log": node.log_path, "workdir": node.workdir})
                else:
                    # The launch never completed: queue it again, as if it had not been tried.
                    self.store.set_status(sub["id"], "queued", now, node_id=None, detail={"rolled_back": True})
            if node is not None and node.lost:
                self._destroy(node.node_id)
        self.inputs.clear_bundles({s["id"] for s in self.store.submissions_with_status("provisioning", "running")})
        active_ids = {s["id"] for s in self.store.submissions_with_status("running", "stopping")}
        for node in nodes:
            if node.submission_id not in active_ids:
                log.info("destroying orphan node %s (submission %s)", node.node_id, node.submission_id)
                self._destroy(node.node_id)

    # --- stopping -----------------------------------------------------------------------------

    def finish_stops(self) -> None:
        for sub in self.store.submissions_with_status("stopping"):
            if not self._destroy_nodes(sub):
                continue  # provider trouble: try again next step
            now = self.clock()
            reason = sub["stop_reason"] or "deleted"
            with self.store.transaction():
                self._nodes_ended(sub, "stopped", now)
                self.store.set_status(sub["id"], STOP_OUTCOME.get(reason, "cancelled"), now, reason=reason)
            self._attempt_ended(sub, f"the run was stopped ({reason})")
            self.inputs.release(sub["id"])
            self._capacity_freed(now)

    def _destroy_nodes(self, sub) -> bool:
        """Stop every node of a submission: its one node, or all of a cluster run's (cancel, restart
        and max_duration act on them all). False when the provider failed for one of them."""
        if self._spec(sub).nodes == 1:
            return not sub["node_id"] or self._destroy(sub["node_id"])
        return all([self._destroy(row["node_id"]) for row in self.store.submission_nodes(sub["id"]) if row["node_id"]])

    def _nodes_ended(self, sub, status: str, now: float) -> None:
        """A cluster run's nodes that were still running are not any more (stopped with their run)."""
        for row in self.store.submission_nodes(sub["id"]) if self._spec(sub).nodes > 1 else ():
            if row["status"] == "running":
                self.store.update_node(sub["id"], row["attempt"], row["rank"], status=status, finished_at=now)

    def _destroy(self, node_id: str) -> bool:
        try:
            self.provider.stop(node_id)
        except ProviderError as exc:
            self._provider_trouble(exc, "stop")
            return False
        self._provider_ok("stop")
        return True

    # --- watching nodes -----------------------------------------------------------------------

    def poll_nodes(self) -> None:
        # Every step lists our nodes, also when nothing should be running: strays are destroyed.
        watched = self.store.submissions_with_status("running")
        try:
            listed = self.provider.nodes()
        except ProviderError as exc:
            self._provider_trouble(exc, "list")
            return
        self._provider_ok("list")
        nodes = self._match_nodes(listed)
        for sub in watched:
            if self._spec(sub).nodes > 1:
                self._poll_gang(sub, nodes.get(sub["id"], {}))
                continue
            node = nodes.get(sub["id"], {}).get(0)
            reported = sub["reported_at"] is not None
            if node is not None and node.running and not reported:
                continue
            now = self.clock()
            # When it ended, which after a restart can be long before now: the node's report
            # for a cloud node, the local node's exit file; a lost node was noticed just now.
            if reported:
                exit_code, event, ended = sub["exit_code"], None, sub["reported_at"]
            elif node is None or node.lost:
                exit_code, event, ended = None, "interruption", None
            else:
                exit_code, event, ended = node.exit_code, None, node.finished_at
            why = self._interrupted(sub, exit_code, event)
            self._finish(sub, exit_code, "interruption" if why else event, now, _when(ended, sub["started_at"], now), why)
            self._attempt_ended(sub, why or f"its node ended (exit code {exit_code})")
            self.inputs.release(sub["id"])  # its tree is no longer served; a retry packs it anew
            if node is not None:
                self._destroy(node.node_id)
            self._capacity_freed(now)

    def _attempt_ended(self, sub, why: str) -> None:
        """Tell the provider an attempt's nodes are done with, and how they ended (a cloud run's logs
        then say what of them never reached the controller)."""
        ended = getattr(self.provider, "attempt_ended", None)
        if ended is not None:
            ended(sub["id"], sub["attempts"], why, self._spec(sub).nodes)

    def _match_nodes(self, listed: list[NodeStatus]) -> dict[int, dict[int, NodeStatus]]:
        """Each active submission's nodes by rank (one, rank 0, for a single-node run); destroys
        nodes no active submission owns, and duplicates.

        A create that was in flight when a controller died can surface after the restart relaunched
        its submission: that second node of one submission (or of one rank of a cluster run) is not
        the recorded one, so it goes.
        """
        active = {s["id"]: s for s in self.store.submissions_with_status("provisioning", "running", "stopping")}
        recorded: dict[int, dict[int, str]] = {}  # a cluster run's recorded node of each rank
        by_sub: dict[int, dict[int, NodeStatus]] = {}
        for node in listed:
            sub = active.get(node.submission_id)
            if sub is not None and self._spec(sub).nodes > 1 and sub["id"] not in recorded:
                recorded[sub["id"]] = {row["rank"]: row["node_id"] for row in self.store.submission_nodes(sub["id"])}
            if sub is None or node.rank in by_sub.get(node.submission_id, {}) or not self._owns(sub, node, recorded):
                log.info("destroying node %s: not the node of an active submission (%s)", node.node_id, node.submission_id)
                self._destroy(node.node_id)
                continue
            by_sub.setdefault(node.submission_id, {})[node.rank] = node
        return by_sub

    def _owns(self, sub, node: NodeStatus, recorded: dict[int, dict[int, str]]) -> bool:
        """Whether `node` is (or, before it is recorded, may be) the node of its rank of `sub`."""
        if self._spec(sub).nodes == 1:
            return node.rank == 0 and (not sub["node_id"] or sub["node_id"] == node.node_id)
        mine = recorded.get(sub["id"], {})
        return node.rank < self._spec(sub).nodes and mine.get(node.rank, node.node_id) == node.node_id

    def _interrupted(self, sub, exit_code: int | None, event: str | None, node_id: str | None = None) -> str | None:
        """Why an unsuccessful node was interrupted (taken back by the provider, as it or the node
        said), or that it was lost; None when its own exit code ended it (gitopsq.interruptions)."""
        if exit_code == 0:
            return None
        notice = interruptions.noticed(self.store, sub["id"], sub["attempts"])
        if notice is None and event != "interruption":
            return None
        node_id = node_id or sub["node_id"]
        ask = getattr(self.provider, "interruption", None)
        taken = ask(node_id) if ask and node_id and event == "interruption" else None
        return interruptions.message(notice, taken)

    def _finish(self, sub, exit_code: int | None, event: str | None, now: float, ended: float, why: str | None = None) -> None:
        """A node ended (at `ended`): done, failed, or back to the queue when the retry policy says so."""
        spec = RunSpec.from_dict(json.loads(sub["spec"]))
        if event is None and exit_code == 0:
            with self.store.transaction():
                self.store.set_status(sub["id"], "done", now, exit_code=0, finished_at=ended)
            return
        event = event or "error"
        reason = "interrupted" if event == "interruption" else "exit-code"
        retry = spec.retry
        window_start = sub["window_start"] or sub["started_at"] or now
        said = {"message": why} if why else {}  # what interrupted it: the provider, or a lost node
        with self.store.transaction():
            if retry and q.retry_after_end(event, retry.on_events, retry.duration, window_start, now):
                attempts = sub["attempts"] + 1
                next_try_at = now + q.backoff_delay(attempts, self.rng.random())
                self.store.set_status(sub["id"], "queued", now, reason=reason, exit_code=exit_code, node_id=None,
                                      attempts=attempts, window_start=now, deadline=_deadline(spec, now),
                                      next_try_at=next_try_at, backoff_event=event, reported_at=None, **said,
                                      detail={"retry": event, "exit_code": exit_code, "next_try_at": next_try_at, **said})
            else:
                self.store.set_status(sub["id"], "failed", now, reason=reason, exit_code=exit_code, finished_at=ended,
                                      **said, detail={"exit_code": exit_code, **said})

    # --- deadlines ----------------------------------------------------------------------------

    def enforce_deadlines(self) -> None:
        now = self.clock()
        for sub in self.store.submissions_with_status("running"):
            reason = _expired(self._spec(sub), sub, now)
            if reason:
                with self.store.transaction():
                    self.store.set_status(sub["id"], "stopping", now, reason=reason, stop_reason=reason)

    # --- admission ----------------------------------------------------------------------------

    def admit_and_launch(self) -> list[int]:
        """Decide for the head of the queue and for submissions that need a decision; launch.

        With 100,000 queued runs and a full machine, only new submissions (a first decision:
        fail without retry, or start their retry window) and expired ones are read; the queue
        itself is read in order from its head, and only as far as the room goes.
        """
        now = self.clock()
        rows = {r["id"]: r for r in self.store.queued_needing_decision(now, FIRST_DECISIONS_PER_STEP)}
        self._undecided = len(rows) == FIRST_DECISIONS_PER_STEP  # maybe more: the next step comes at once
        queue = self.store.queued_in_order()
        head = next(queue, None)
        if not rows and head is None:
            return []
        try:
            capacity = self.provider.capacity()
        except ProviderError as exc:
            self._provider_trouble(exc, "list")
            return []
        freed_at = self._freed_at()
        self._known_secrets = None  # read once per admission, only when a run references a secret
        decision = None
        # The head of the queue is always in the decision: a submission new in this step never
        # takes freed room before one ahead of it that fits, or a cluster run that waits for it.
        for chunk in itertools.chain([head], queue) if head else ():
            rows.update((r["id"], r) for r in chunk)
            decision = self._decide(rows, capacity, now, freed_at)
            if self._full(capacity, decision, rows):
                break
        queue.close()  # the read ends here: no statement left open across the writes below
        if decision is None:
            decision = self._decide(rows, capacity, now, freed_at)
        self._record_decision(decision, rows, capacity, now)
        launched = []
        for sub_id in decision.launch:
            if self._launch(rows[sub_id], self._spec(rows[sub_id])):
                launched.append(sub_id)
        return launched

    def _record_decision(self, decision: q.Decision, rows: dict, capacity: dict[str, int], now: float) -> None:
        """Write what the decision changes of the runs that do not launch, and what is left free;
        no transaction at all when it changes nothing (the usual step with a long queue)."""
        opening = [sub_id for sub_id in decision.wait
                   if rows[sub_id]["backoff_event"] == "secret-missing" or rows[sub_id]["window_start"] is None]
        free = self._left(capacity, decision, rows)
        if not (decision.fail or self._secret_waits or opening or free != self._free_recorded):
            return
        with self.store.transaction():
            for sub_id, reason in decision.fail:
                self.store.set_status(sub_id, "failed", now, reason=reason, message=self._unsatisfiable.get(sub_id))
            for sub_id, names in self._secret_waits.items():
                self._wait_for_secrets(rows[sub_id], names, now)
            for sub_id in opening:
                if rows[sub_id]["backoff_event"] == "secret-missing":  # its secrets exist now: it waits for room
                    self.store.update_submission(sub_id, message=None, backoff_event=None)
                if rows[sub_id]["window_start"] is None:  # the retry window opens the first time it waits
                    spec = self._spec(rows[sub_id])
                    self.store.update_submission(sub_id, window_start=now, deadline=_deadline(spec, now),
                                                 demand=self._demand_text(spec))
            if free != self._free_recorded:  # for `ps` to say what a queued run waits for
                self.store.set_meta("capacity_free", json.dumps(free, sort_keys=True))
        self._free_recorded = free  # only once committed

    def _decide(self, rows: dict, capacity: dict[str, int], now: float, freed_at: float | None) -> q.Decision:
        waiting, failed = [], []
        self._secret_waits = {}
        for row in rows.values():
            entry = self._queued_entry(row)
            missing = self._missing_secrets(entry.secrets)
            if missing:  # not a capacity question: it takes no room and holds up no one behind it
                self._secret_waits[row["id"]] = missing
                continue
            if row["id"] not in self._unsatisfiable:  # asked once per submission, not once per step
                self._unsatisfiable[row["id"]] = self.provider.unsatisfiable(entry.spec)
            if self._unsatisfiable[row["id"]]:  # nothing here can ever run it: fail at once, naming the resource
                failed.append((row["id"], "unsatisfiable"))
            else:
                waiting.append(entry.waiting)
        decision = q.admit(waiting, capacity, now, freed_at)
        return q.Decision(decision.launch, tuple(failed) + decision.fail, decision.wait, decision.next_check_at,
                          decision.reserved)

    def _missing_secrets(self, names: frozenset[str]) -> list[str]:
        if not names:
            return []
        if self._known_secrets is None:
            self._known_secrets = self.inputs.known_secrets()
        return sorted(names - self._known_secrets)

    def _wait_for_secrets(self, sub, names: list[str], now: float) -> None:
        """Queued until the secrets exist (`secret set` wakes the controller): said once, not each step."""
        message = f"secret-missing: {', '.join(names)}"
        if sub["message"] != message or sub["backoff_event"] != "secret-missing":
            self.store.update_submission(sub["id"], message=message, backoff_event="secret-missing", next_try_at=None)
            self.store.event(sub["run"], sub["id"], "secret-missing", {"names": names}, None, now)

    def _left(self, capacity: dict[str, int], decision: q.Decision, rows: dict) -> dict[str, int]:
        """The capacity left once this decision's launches have taken theirs."""
        left = dict(capacity)
        for sub_id in decision.launch:
            for key, amount in self._queued_entry(rows[sub_id]).waiting.demand.items():
                if key in left:
                    left[key] -= amount
        return left

    def _demand_text(self, spec: RunSpec) -> str:
        """What a submission needs from the provider, as stored for `ps` (submissions.demand)."""
        return json.dumps(self.provider.demand(spec), sort_keys=True)

    def _full(self, capacity: dict[str, int], decision: q.Decision, rows: dict) -> bool:
        """True when what is left after this decision's launches, less what waiting cluster runs have
        set aside, cannot fit even the smallest run (reading further down the queue is then useless)."""
        left = q.unreserved(self._left(capacity, decision, rows), decision.reserved)
        if self._floor is None:  # the provider's demand depends on the spec alone
            self._floor = self.provider.demand(RunSpec(name="floor", type="task"))
        return any(key in left and left[key] < amount for key, amount in self._floor.items() if amount > 0)

    def _spec(self, row) -> RunSpec:
        """A submission's spec, decoded once per spec text (the queue is read every step)."""
        cached = self._specs.get(row["id"])
        if cached is None or cached[0] != row["spec"]:
            cached = self._specs[row["id"]] = (row["spec"], RunSpec.from_dict(json.loads(row["spec"])))
        return cached[1]

    def _queued_entry(self, row) -> _Queued:
        """What admission needs of a queued submission (spec, secret names, its queue.Waiting),
        derived once per version of its row: the head of the queue is read every step, and a row
        that changed in any column (priority, backoff, retry window, spec) is derived again."""
        entry, values = self._queued.get(row["id"]), tuple(row)  # values: Row == compares column names too
        if entry is None or entry.values != values:
            spec = self._spec(row)
            entry = self._queued[row["id"]] = _Queued(values, spec, frozenset(spec.secrets), self._waiting(row, spec))
        return entry

    def _waiting(self, sub, spec: RunSpec) -> q.Waiting:
        retry = spec.retry
        on_capacity = bool(retry and retry.covers("no-capacity"))
        return q.Waiting(sub["id"], sub["run"], sub["priority"], sub["queued_at"], self.provider.demand(spec),
                         on_capacity, sub["deadline"] if on_capacity else None, sub["next_try_at"], sub["last_attempt_at"],
                         wakes_on_free=sub["backoff_event"] in (None, "no-capacity"), nodes=spec.nodes)

    def _launch(self, sub, spec: RunSpec) -> bool:
        now = self.clock()
        secrets, missing = self.inputs.resolve(spec)
        if missing:  # removed since the decision: wait again
            with self.store.transaction():
                self._wait_for_secrets(sub, missing, now)
            return False
        with self.store.transaction():  # intent first: a crash from here on is adopted or rolled back
            waited = {"message": None} if sub["backoff_event"] == "secret-missing" else {}
            self.store.set_status(sub["id"], "provisioning", now, last_attempt_at=now,
                                  demand=sub["demand"] or self._demand_text(spec), **waited)
            self.inputs.record(sub["id"], sub["attempts"], secrets.values())  # before any process can print them
        try:
            tree = self.inputs.prepare(spec, sub["commit_sha"])
        except WorkspaceError as exc:  # a clone that fails fails the attempt: the `error` event
            self._launch_failed(sub, spec, ProviderError(ERROR, "workspace", str(exc)), self.clock())
            return False
        if tree and tree.credentials:
            self.inputs.record(sub["id"], sub["attempts"], [*secrets.values(), *tree.credentials])
        launch = Launch(sub["id"], sub["run"], sub["number"], spec, attempt_token(sub["token"], sub["attempts"]), sub["attempts"],
                        commit=sub["commit_sha"],
                        secrets=secrets, tree=tree.prepared.dest if tree else None,
                        tree_env=tree.prepared.env if tree else {},
                        tree_outside=tuple((str(o.source), o.dst) for o in tree.prepared.outside) if tree else ())
        try:
            nodes = self.provider.launch_gang(launch) if spec.nodes > 1 else [self.provider.launch(launch)]
        except ProviderError as exc:
            self._launch_failed(sub, spec, exc, self.clock())
            return False
        finally:
            self.inputs.discard(launch.tree)  # what the provider did not take
        now = self.clock()
        self._provider_ok("launch")
        if spec.nodes > 1:
            self._gang_running(sub, nodes, now)
            return True
        node = nodes[0]
        with self.store.transaction():
            self.store.set_status(sub["id"], "running", now, node_id=node.node_id, started_at=now, window_start=now,
                                  deadline=None, log_path=node.log_path, workdir=node.workdir, next_try_at=None,
                                  backoff_event=None, detail={"node": node.node_id, "log": node.log_path, "workdir": node.workdir})
        return True

    def _launch_failed(self, sub, spec: RunSpec, exc: ProviderError, now: float) -> None:
        retry = spec.retry
        detail = {"kind": exc.kind, "code": exc.code, "message": exc.message}
        with self.store.transaction():
            if exc.kind == UNSATISFIABLE:
                self.store.set_status(sub["id"], "failed", now, reason="unsatisfiable", message=exc.message, detail=detail)
            elif exc.kind == CAPACITY:
                if retry and retry.covers("no-capacity"):
                    attempts, window_start = sub["attempts"] + 1, sub["window_start"] or now
                    self.store.set_status(sub["id"], "queued", now, attempts=attempts, message=str(exc), detail=detail,
                                          window_start=window_start, deadline=_deadline(spec, window_start),
                                          next_try_at=now + q.backoff_delay(attempts, self.rng.random()),
                                          backoff_event="no-capacity")
                else:
                    self.store.set_status(sub["id"], "failed", now, reason="no-capacity", message=str(exc), detail=detail)
            elif exc.kind in (THROTTLE, AUTH):
                # The provider's trouble, not the run's: wait and try again, not counted as an attempt.
                self._provider_trouble(exc, "launch")
                self.store.set_status(sub["id"], "queued", now, message=str(exc), detail=detail,
                                      next_try_at=now + q.backoff_delay(1, self.rng.random()), backoff_event=exc.kind)
            else:
                window_start = sub["window_start"] or now
                if retry and q.retry_after_end("error", retry.on_events, retry.duration, window_start, now):
                    attempts = sub["attempts"] + 1
                    self.store.set_status(sub["id"], "queued", now, attempts=attempts, message=str(exc), detail=detail,
                                          window_start=window_start, deadline=_deadline(spec, window_start),
                                          next_try_at=now + q.backoff_delay(attempts, self.rng.random()),
                                          backoff_event="error")
                else:
                    self.store.set_status(sub["id"], "failed", now, reason="provider-error", message=str(exc), detail=detail)
        self.store.event(sub["run"], sub["id"], "provider-error", detail, None, now)
        self.inputs.release(sub["id"])  # a tree packed for the node that was not made

    # --- bookkeeping --------------------------------------------------------------------------

    @property
    def provider_health(self) -> str | None:
        """None when the provider answers, else the one message to show (also on the dashboard)."""
        return next(iter(self._trouble.values()), None)

    def _provider_trouble(self, exc: ProviderError, operation: str) -> None:
        if self.on_provider_error:
            self.on_provider_error(exc.kind)
        message = f"provider {self.provider.name}: {exc.kind}: {exc}"
        if message not in self._trouble.values():
            log.warning("%s", message)  # once per distinct problem, not once per run
        self._trouble[operation] = message

    def _provider_ok(self, operation: str) -> None:
        self._trouble.pop(operation, None)

    def _capacity_freed(self, now: float) -> None:
        self.store.set_meta("capacity_freed_at", repr(now))

    def _freed_at(self) -> float | None:
        value = self.store.meta("capacity_freed_at")
        return float(value) if value else None

    def next_wake(self) -> float | None:
        """When the next step is due without any trigger (None: only a trigger can change anything)."""
        now = self.clock()
        if self._undecided:
            return now
        times = [t for t in (*self.store.queue_timers(now), self.store.next_schedule_tick()) if t is not None]
        if self.store.has_active_nodes():
            times.append(now + POLL_INTERVAL)
        return min(times) if times else None


def _when(moment: float | None, not_before: float | None, now: float) -> float:
    """A time a node reported, kept between `not_before` and now (its clock may differ from ours)."""
    return q.within(moment, not_before, now)


def _deadline(spec: RunSpec, window_start: float | None) -> float | None:
    """When a queued run stops waiting for capacity: its retry window's end (None: never)."""
    retry = spec.retry
    if window_start is None or not retry or not retry.covers("no-capacity") or retry.duration is None:
        return None
    return window_start + retry.duration


def _expired(spec: RunSpec, sub, now: float) -> str | None:
    started = sub["started_at"]
    if spec.max_duration is not None and started is not None and now - started >= spec.max_duration:
        return "max-duration-exceeded"
    if spec.type == "dev-environment" and spec.inactivity_duration is not None:
        last = max(t for t in (sub["last_activity_at"], started, 0) if t is not None)
        if now - last >= spec.inactivity_duration:
            return "inactivity-duration-exceeded"
    return None


def _record_node_report(store: Store, sub, rank: int | None, exit_code: int, now: float) -> bool:
    node = next((row for row in store.submission_nodes(sub["id"], sub["attempts"]) if row["rank"] == rank), None)
    if node is None or node["reported_at"] is not None or node["status"] != "running":
        return False
    with store.transaction():
        store.update_node(sub["id"], sub["attempts"], rank, exit_code=exit_code, reported_at=now)
        store.event(sub["run"], sub["id"], "reported", {"exit_code": exit_code, "rank": rank}, None, now)
    return True


def touch(store: Store, run: str, now: float) -> bool:
    """Record activity of a run's dev environment (resets its inactivity clock)."""
    current = store.current_submission(run)
    if current is None or current["status"] not in ("queued", "provisioning", "running"):
        return False
    with store.transaction():
        store.update_submission(current["id"], last_activity_at=now)
    return True


def record_report(store: Store, submission_id: int, token: str, exit_code: int, now: float, rank: int | None = None) -> bool:
    """A node's exit-code report: accepted only with the token of the submission's current attempt
    (an earlier attempt's report, replayed, changes nothing), only while it runs. A node of a
    cluster run reports with its rank, once."""
    sub = store.submission(submission_id)
    if not is_current_attempt(sub, token):
        return False
    if sub["status"] not in ("provisioning", "running") or sub["reported_at"] is not None:
        return False
    if json.loads(sub["spec"]).get("nodes", 1) > 1:
        return _record_node_report(store, sub, rank, exit_code, now)
    with store.transaction():
        store.update_submission(submission_id, exit_code=exit_code, reported_at=now)
        store.event(sub["run"], submission_id, "reported", {"exit_code": exit_code}, None, now)
    return True
