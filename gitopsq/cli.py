"""The `gitopsq` command line: thin click wrappers over the library."""

import re

import click

from gitopsq import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gitopsq")
def main() -> None:
    """gitopsq: commit run files to git; gitopsq validates, queues and provisions them."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="text: file:line: field: message; json: for scripts; github: ::error annotations for GitHub Actions.")
def validate(paths: tuple[str, ...], fmt: str) -> None:
    """Check run files against the schema.

    PATHS are run files or folders (default: the current folder). A folder is read as a config
    repo: its .gitopsq.yml `paths` select the run files and its `defaults` apply. A run name
    claimed by two files is an error on both. Exits 0 when everything is valid, 1 otherwise.
    """
    from gitopsq.localfiles import collect
    from gitopsq.output import github_annotation, problems_json
    from gitopsq.runset import build_runset
    from gitopsq.spec import parse_run

    collected = collect(list(paths) or ["."])
    runs = build_runset(collected.files, None, parse=lambda path, raw: parse_run(raw, path, collected.configs[path].defaults))
    problems = collected.problems + runs.all_problems()
    if fmt == "json":
        valid = [{"file": path, "name": spec.name, "type": spec.type} for path, spec in sorted(runs.specs.items())]
        click.echo(problems_json(problems, valid=valid))
    elif fmt == "github":
        for problem in problems:
            click.echo(github_annotation(problem))
    else:
        for problem in problems:
            click.echo(str(problem))
        bad = len(runs.problems)
        click.echo(f"{len(collected.files)} run file(s) checked: {len(runs.specs)} valid, {bad} invalid", err=True)
    if problems:
        raise SystemExit(1)


@main.command()
@click.option("--repo", "repo_dir", default=".", show_default=True, type=click.Path(file_okay=False), help="The config repository (a local git repo).")
@click.option("--base", required=True, help="The ref the change would replace, e.g. origin/main.")
@click.option("--head", required=True, help="The ref with the change, e.g. HEAD or a pull request branch.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True,
              help="markdown is made for a pull-request comment.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes, 1 on errors.")
def plan(repo_dir: str, base: str, head: str, fmt: str, detailed_exitcode: bool) -> None:
    """Show what the controller would do if HEAD replaced BASE.

    Every run valid at BASE is taken as running: an edit of priority, retry, max_duration or
    inactivity_duration updates it in place, any other edit restarts it, a deleted file
    cancels it, a new file submits it, and an invalid file changes nothing (its errors are
    listed). Without --detailed-exitcode the exit code is 1 on errors, else 0.
    """
    from gitopsq.desired import plan_refs
    from gitopsq.output import plan_json, plan_markdown, plan_text
    from gitopsq.source import ConfigRepo, SourceError

    try:
        with ConfigRepo(repo_dir) as repo:
            base_sha, head_sha, actions, problems = plan_refs(repo, base, head)
    except SourceError as exc:
        raise click.ClickException(str(exc))
    if fmt == "markdown":
        click.echo(plan_markdown(actions, problems, base_sha, head_sha), nl=False)
    elif fmt == "json":
        click.echo(plan_json(actions, problems, base_sha, head_sha))
    else:
        click.echo(plan_text(actions, problems))
    if problems:
        raise SystemExit(1)
    if detailed_exitcode and actions:
        raise SystemExit(2)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
def init(directory: str) -> None:
    """Create a config repository in DIRECTORY holding the example runs, committed.

    The examples (a task, a high-priority task, a service and a dev environment) run on any
    machine through the embedded local provider: `gitopsq serve --repo DIRECTORY`. A DIRECTORY
    that already is a config repository is left as it is (running init twice is safe).
    """
    from gitopsq.initrepo import AlreadyThere, init_repo

    try:
        sha = init_repo(directory)
    except AlreadyThere as exc:
        click.echo(f"{exc}.")
        return
    except FileExistsError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"Created config repository {directory} at commit {sha[:12]}.")
    click.echo(f"Next: gitopsq validate {directory} && gitopsq serve --repo {directory}")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-Q", "--queue", is_flag=True, help="Queue until it fits: retry on no-capacity forever (overrides the file's retry).")
@click.option("--repo", "repo_dir", default=".", show_default=True, type=click.Path(file_okay=False), help="The config repository (a local git repo).")
@click.option("--push", is_flag=True, help="Push the commit to the branch's upstream.")
def apply(file: str, queue: bool, repo_dir: str, push: bool) -> None:
    """Validate FILE, write it into the config repo and commit it.

    It goes to the file that already defines the same run name, else to runs/<name>.yml.
    Nothing is committed when the content is unchanged.
    """
    from pathlib import Path

    from gitopsq.apply import apply_file
    from gitopsq.output import short_json
    from gitopsq.yamlload import SpecError

    try:
        applied = apply_file(Path(file), Path(repo_dir), queue, push)
    except SpecError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise SystemExit(1)
    if applied.commit is None:
        click.echo(f"{applied.path}: unchanged, nothing committed.")
        return
    click.echo(f"Committed {applied.commit[:12]}: {applied.path} (run {applied.spec.name})")
    for name, (old, new) in applied.changes.items():
        click.echo(f"  {name}: {short_json(old)} -> {short_json(new)}")
    click.echo(applied.content.decode(), nl=False)

# --- running runs -------------------------------------------------------------------------------

db_option = click.option("--db", envvar="GITOPSQ_DB", type=click.Path(dir_okay=False),
                         help="State database (default: $GITOPSQ_DB, else ~/.local/state/gitopsq/gitopsq.db).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _provider_options(provider, local_slots, local_gpus, provider_opt, max_nodes, public_url):
    from gitopsq.runtime import ProviderOptions

    pairs = []
    for item in provider_opt:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--provider-opt")
        pairs.append(tuple(item.split("=", 1)))
    return ProviderOptions(provider, local_slots, local_gpus, tuple(pairs), max_nodes, public_url)


@main.command()
@click.option("--repo", "repo_location", required=True, help="The config repository: a local path, or a URL to clone and fetch.")
@click.option("--branch", default="main", show_default=True, help="The branch whose tip is the desired state.")
@db_option
@click.option("--once", is_flag=True, help="Run one controller step and exit.")
@click.option("--provider", default="local", show_default=True,
              help="local (this machine), slurm (a Slurm partition), or a Libcloud compute provider such as ec2.")
@click.option("--provider-opt", multiple=True, metavar="KEY=VALUE",
              help="Passed to the provider: for ec2 region=..., endpoint=URL, image=...; for slurm see below.")
@click.option("--local-slots", type=click.IntRange(min=1), help="Runs at once on this machine (default: CPU count).")
@click.option("--local-gpus", type=click.IntRange(min=0), help="GPUs on this machine (default: what nvidia-smi reports, else 0).")
@click.option("--max-nodes", type=click.IntRange(min=1), help="Cap on nodes a cloud provider (or jobs Slurm) runs at once.")
@click.option("--public-url", help="How cloud nodes reach this controller to report their exit code.")
@click.option("--http", "http", default="127.0.0.1:8765", show_default=True, metavar="HOST:PORT",
              help="Where the JSON API, webhook, metrics and dashboard listen; 'off' for none.")
@click.option("--interval", default="60s", show_default=True, help="How often to fetch a remote repo, and to check everything anyway.")
@click.option("--webhook-secret-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding the shared secret that webhook signatures are checked against.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def serve(repo_location, branch, db, once, provider, provider_opt, local_slots, local_gpus, max_nodes, public_url,
          http, interval, webhook_secret_file, log_format) -> None:
    """Reconcile the config repo: submit, update, restart and cancel runs, and run the queue.

    Runs until SIGTERM or Ctrl-C, reacting to commits at once (a local repo is watched; a URL
    is fetched every --interval, or when a webhook arrives), and serves the API and dashboard.
    On exit, nodes keep running; the next start adopts them.

    With --once: one step (read the branch tip, apply the plan, watch nodes, admit from the
    queue), then exit.

    \b
    --provider slurm runs each run as a batch job; its --provider-opt keys:
      partition=NAME      the partition (default: the cluster's default one)
      account=NAME        sbatch --account
      qos=NAME            sbatch --qos
      bin_dir=PATH        where sbatch, squeue, scontrol, scancel, sinfo are (default: PATH)
      login=USER@HOST     run those commands on a login host over ssh
      ssh=COMMAND         the ssh command for login (default: ssh -o BatchMode=yes)
      slurm_conf=PATH     SLURM_CONF for the commands (default: the environment's)
      sbatch_args='ARGS'  extra sbatch arguments, e.g. '--constraint=ib --exclusive'
      pending_grace=SECS  how long a new job may stay pending before it goes back
                          to gitopsq's queue (default 10)
      workdir_root=PATH   working directories and logs, on a filesystem the nodes
                          (and with login, this machine) mount at the same path
                          (default: beside the state database)
    """
    from gitopsq.providers.base import ProviderConfigError
    from gitopsq.runtime import make_controller, open_store

    opts = _provider_options(provider, local_slots, local_gpus, provider_opt, max_nodes, public_url)
    store = open_store(db)
    try:
        controller = make_controller(repo_location, branch, store, opts)
    except ProviderConfigError as exc:  # bad --provider-opt, missing credentials or --public-url
        raise click.ClickException(str(exc)) from None
    if once:
        result = controller.step(fetch=True)
        for action in result.actions:
            click.echo(f"{action.kind} {action.run}")
        if controller.provider_health:
            click.echo(controller.provider_health, err=True)
        return
    from pathlib import Path

    from gitopsq.daemon import DaemonOptions, run_daemon
    from gitopsq.spec import parse_duration

    if not re.fullmatch(r"[0-9]+[smhdw]?", interval):
        raise click.BadParameter("use seconds or 30s, 5m, 1h", param_hint="--interval")
    seconds = parse_duration(interval if interval[-1].isalpha() else int(interval))
    secret = Path(webhook_secret_file).read_bytes().strip() if webhook_secret_file else None
    run_daemon(controller, DaemonOptions(None if http == "off" else http, float(seconds), secret, log_format))


@main.command()
@db_option
@click.option("--all", "include_all", is_flag=True, help="Include runs whose file is gone.")
@click.option("--status", help="Only runs whose current submission has this status.")
@json_option
def ps(db, include_all, status, as_json) -> None:
    """List runs in queue order: active ones by priority then first queued, then finished ones."""
    from gitopsq.runtime import open_store
    from gitopsq.store import listing
    from gitopsq.views import print_json, runs_table

    rows = listing(open_store(db), include_all, status)
    print_json(rows) if as_json else runs_table(rows)


@main.command()
@click.argument("name")
@db_option
@json_option
def history(name, db, as_json) -> None:
    """Every submission of run NAME, oldest first, with status, reason and log file."""
    from gitopsq.runtime import open_store
    from gitopsq.store import submissions
    from gitopsq.views import history_table, print_json

    rows = submissions(open_store(db), run=name)
    if not rows:
        raise click.ClickException(f"no run named {name!r}")
    print_json(rows) if as_json else history_table(rows)


@main.command()
@click.argument("name")
@db_option
@click.option("--submission", "number", type=int, help="Submission number (default: the latest).")
def logs(name, db, number) -> None:
    """Print the output of run NAME (every attempt of the submission, oldest first)."""
    from pathlib import Path

    from gitopsq.runtime import open_store
    from gitopsq.store import attempt_logs

    store = open_store(db)
    rows = store.history(name)
    if not rows:
        raise click.ClickException(f"no run named {name!r}")
    sub = rows[-1] if number is None else next((r for r in rows if r["number"] == number), None)
    if sub is None:
        raise click.ClickException(f"run {name!r} has no submission {number}")
    paths = attempt_logs(store, sub["id"])
    if not paths:
        raise click.ClickException(_no_log(name, dict(sub)))
    for index, path in enumerate(paths):
        if len(paths) > 1:
            click.echo(f"--- attempt {index + 1} ({path})")
        try:
            click.echo(Path(path).read_text(errors="replace"), nl=False)
        except OSError as exc:
            click.echo(f"(log not readable here: {exc.strerror})", err=True)


def _no_log(name: str, sub: dict) -> str:
    """Why a submission has no output to show: it never started, and what stopped it."""
    import json
    import time

    from gitopsq.explain import end_reason, wait_reason

    head = f"{name} submission {sub['number']} has no log: it never started"
    if sub["status"] == "queued":
        needs = json.loads(sub["demand"]) if sub.get("demand") else None
        return f"{head} (queued: {wait_reason(dict(sub, needs=needs), time.time())})"
    if sub["status"] in ("provisioning", "running"):
        return f"{head} yet ({sub['status']})"
    return f"{head} ({sub['status']}: {end_reason(sub) or 'no reason recorded'})"


@main.command()
@click.argument("name")
@db_option
def touch(name, db) -> None:
    """Report activity of dev environment NAME: resets its inactivity_duration clock."""
    import time

    from gitopsq.controller import touch as record_touch
    from gitopsq.runtime import open_store

    if not record_touch(open_store(db), name, time.time()):
        raise click.ClickException(f"run {name!r} is not active")
    click.echo(f"{name}: activity recorded")


@main.command()
@click.argument("submission_id", type=int)
@click.option("--token", required=True, help="The submission's token (given to the node in its user-data).")
@click.option("--exit-code", required=True, type=int, help="The exit code of the run's commands.")
@db_option
def report(submission_id, token, exit_code, db) -> None:
    """Record a cloud node's exit code for SUBMISSION_ID; a wrong token changes nothing."""
    import time

    from gitopsq.controller import record_report
    from gitopsq.runtime import open_store

    if not record_report(open_store(db), submission_id, token, exit_code, time.time()):
        raise click.ClickException("report refused: unknown submission, wrong token, or not running")
    click.echo(f"submission {submission_id}: exit code {exit_code} recorded")
