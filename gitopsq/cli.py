"""The `gitopsq` command line: thin click wrappers over the library."""

import re
import signal
from contextlib import contextmanager

import click

from gitopsq import __version__
from gitopsq.cliopts import db_option, json_option, server_option, token_option


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
    runs = build_runset(collected.files, None, parse=lambda path, raw: parse_run(
        raw, path, collected.configs[path].defaults, repo_path=collected.repo_paths[path]))
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
@server_option
@token_option
@click.option("--db", "state_db", type=click.Path(dir_okay=False),
              help="Plan against this state database on this machine (read only), instead of --server.")
def plan(repo_dir: str, base: str, head: str, fmt: str, detailed_exitcode: bool, server: str | None, token: str | None,
         state_db: str | None) -> None:
    """Show what the controller would do if HEAD replaced BASE.

    With --server URL (a read token: --token or $GITOPSQ_TOKEN) or --db FILE, against what the
    controller holds: an edited finished run is a new submission, an edit of an active run says
    how long it has been running and what a restart discards, a deleted one what it cancels; and
    what the change does to the queue (the place each new or changed run takes, the runs it
    passes, whether it starts at once), what the provider lacks for it (resources it can never
    have, secrets that are not set). The controller does not preempt: a run that waits says which
    lower-priority runs keep running.

    Without them, from git alone: every run valid at BASE is taken as running, so an edit of
    priority, retry, max_duration or inactivity_duration reads as an update in place, any other
    edit as a restart, a deleted file as a cancel, and a new file as a submit. Invalid files
    change nothing (their errors are listed). Without --detailed-exitcode the exit code is 1 on
    errors, else 0.
    """
    from gitopsq.desired import plan_refs, plan_refs_live
    from gitopsq.output import LiveView, plan_json, plan_markdown, plan_text
    from gitopsq.source import ConfigRepo, SourceError

    if server and state_db:
        raise click.BadParameter("give --server or --db, not both", param_hint="--server/--db")
    live = None
    try:
        with ConfigRepo(repo_dir) as repo:
            if server or state_db:
                from gitopsq.livestate import StateUnavailable, from_db, from_server
                from gitopsq.plan import live_effects

                try:
                    read = from_server(server, token) if server else from_db(state_db)
                    base_sha, head_sha, actions, problems, state, source = plan_refs_live(repo, base, head, read)
                except StateUnavailable as exc:
                    raise click.ClickException(str(exc)) from None
                if state is not None:
                    live = LiveView(source, state, live_effects(actions, state))
            else:
                base_sha, head_sha, actions, problems = plan_refs(repo, base, head)
    except SourceError as exc:
        raise click.ClickException(str(exc))
    if fmt == "markdown":
        click.echo(plan_markdown(actions, problems, base_sha, head_sha, live), nl=False)
    elif fmt == "json":
        click.echo(plan_json(actions, problems, base_sha, head_sha, live))
    else:
        click.echo(plan_text(actions, problems, live))
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


branch_help = "The branch the controller watches (default: $GITOPSQ_BRANCH, else main)."


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-Q", "--queue", is_flag=True, help="Queue until it fits: retry on no-capacity forever (sets the file's retry).")
@click.option("--repo", "repo_dir", default=".", show_default=True, type=click.Path(file_okay=False), help="The config repository (a local git repo).")
@click.option("--branch", envvar="GITOPSQ_BRANCH", default="main", help=branch_help + " It must be checked out.")
@click.option("--push", is_flag=True, help="Push the commit to the branch's upstream.")
@click.option("--provider", default="local", show_default=True, help="The controller's provider, which -Q asks whether the run can ever fit.")
@click.option("--provider-opt", multiple=True, metavar="KEY=VALUE", help="As for serve: the cloud provider's options.")
@click.option("--local-gpus", type=click.IntRange(min=0), help="As for serve: GPUs of the local provider (default: what nvidia-smi reports).")
def apply(file: str, queue: bool, repo_dir: str, branch: str, push: bool, provider: str, provider_opt, local_gpus) -> None:
    """Validate FILE, write it into the config repo and commit it on the watched branch.

    It goes to the file that already defines the same run name, else to runs/<name>.yml, as
    written: comments, block scalars and key order stay, and only what apply sets changes (the
    retry key with -Q; name, when the target's file name would name the run otherwise). It
    prints the diff of the file's text. It refuses when another branch is checked out, and,
    with -Q, a run the provider can never hold. Nothing is committed when the content is unchanged.
    """
    from pathlib import Path

    from gitopsq.apply import ApplyRefused, ProviderCheck, apply_file
    from gitopsq.yamlload import SpecError

    options = dict(_provider_options(provider, None, local_gpus, provider_opt, None, None, None).options)
    check = ProviderCheck(provider, options, local_gpus=local_gpus)
    try:
        applied = apply_file(Path(file), Path(repo_dir), queue, push, branch, unsatisfiable=check)
    except SpecError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise SystemExit(1)
    except ApplyRefused as exc:
        raise click.ClickException(str(exc)) from None
    if applied.commit is None:
        click.echo(f"{applied.path}: unchanged, nothing committed.")
        return
    click.echo(f"Committed {applied.commit[:12]} on {branch}: {applied.path} (run {applied.spec.name})")
    click.echo(applied.diff, nl=False)

# --- running runs -------------------------------------------------------------------------------



def _provider_options(provider, local_slots, local_gpus, provider_opt, max_nodes, public_url, max_log_size,
                      keep_workdirs=None, workdirs_max_size=None, insecure_public_url=False, credentials=None,
                      run_user=None, no_run_user=False, allow_cidrs=()):
    from gitopsq.runtime import ProviderOptions

    pairs = []
    for item in provider_opt:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--provider-opt")
        pairs.append(tuple(item.split("=", 1)))
    return ProviderOptions(provider, local_slots, local_gpus, tuple(pairs), max_nodes, public_url, max_log_size=max_log_size,
                           keep_workdirs=keep_workdirs, workdirs_max_size=workdirs_max_size,
                           insecure_public_url=insecure_public_url, credentials=credentials, run_user=run_user,
                           no_run_user=no_run_user, allow_cidrs=tuple(allow_cidrs))


def _log_size(ctx, param, value):
    from gitopsq.runtime import parse_log_size

    try:
        return parse_log_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _byte_size(ctx, param, value):
    from gitopsq.runtime import parse_byte_size

    try:
        return parse_byte_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option("--repo", "repo_location", required=True, help="The config repository: a local path, or a URL to clone and fetch.")
@click.option("--branch", envvar="GITOPSQ_BRANCH", default="main", help="The branch whose tip is the desired state (default: $GITOPSQ_BRANCH, else main).")
@db_option
@click.option("--once", is_flag=True, help="Run one controller step and exit.")
@click.option("--provider", default="local", show_default=True,
              help="local (this machine), slurm (a Slurm partition), or a Libcloud compute provider such as ec2.")
@click.option("--provider-opt", multiple=True, metavar="KEY=VALUE",
              help="Passed to the provider: for ec2 region=..., endpoint=URL, image=...; for slurm see below.")
@click.option("--local-slots", type=click.IntRange(min=1), help="Runs at once on this machine (default: CPU count).")
@click.option("--local-gpus", type=click.IntRange(min=0), help="GPUs on this machine (default: what nvidia-smi reports, else 0).")
@click.option("--max-log-size", default="16MB", show_default=True, callback=_log_size, metavar="SIZE",
              help="Output kept per run (512KB, 16MB, 1GB): past it, the log keeps its tail.")
@click.option("--keep-workdirs", default=5, show_default=True, type=click.IntRange(min=0), metavar="N",
              help="Working directories of ended local runs kept per run: those of its last N submissions.")
@click.option("--workdirs-max-size", default="20GB", show_default=True, callback=_byte_size, metavar="SIZE",
              help="Disk the kept working directories may take in total (512MB, 20GB); past it, the oldest go.")
@click.option("--run-user", metavar="NAME",
              help="The unprivileged user local process runs execute as, so that they cannot read the controller's "
                   "state (needs root; default: gitopsq-run when it exists).")
@click.option("--no-run-user", is_flag=True, help="Run local process runs as the controller's own user (not isolated).")
@click.option("--max-nodes", type=click.IntRange(min=1), help="Cap on nodes a cloud provider (or jobs Slurm) runs at once.")
@click.option("--public-url", help="How cloud nodes reach this controller to report their exit code: https://..., "
                                    "or http:// on a loopback address.")
@click.option("--allow-cidr", "allow_cidrs", multiple=True, metavar="CIDR",
              help="A network cloud runs' ports (a service's port, a task's ports) are opened to, in a security group "
                   "of each run's own; repeatable (default: nobody).")
@click.option("--insecure-public-url", is_flag=True,
              help="Allow an http:// --public-url off loopback (nodes' report tokens then travel in clear text).")
@click.option("--http", "http", default="127.0.0.1:8765", show_default=True, metavar="HOST:PORT",
              help="Where the JSON API, webhook, metrics and dashboard listen; 'off' for none. Every route but "
                   "/healthz needs an API token (gitopsq token); off loopback, use TLS.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), metavar="PEM",
              help="Serve HTTPS with this certificate (chain), with --tls-key.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), metavar="PEM", help="The private key of --tls-cert.")
@click.option("--metrics-open", is_flag=True, help="Let /metrics answer without a token (for a Prometheus that sends none).")
@click.option("--public-host", metavar="HOST",
              help="The host name people reach runs on this machine by, for services' URLs and ports "
                   "(default: the --http host, this machine's name when that is every address, else localhost).")
@click.option("--interval", default="60s", show_default=True, help="How often to fetch a remote repo, and to check everything anyway.")
@click.option("--webhook-secret-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding the shared secret that webhook signatures are checked against. Without one the "
                   "webhook takes unsigned requests on loopback only, and is closed elsewhere.")
@click.option("--provider-key-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding the cloud provider's key (default: $GITOPSQ_PROVIDER_KEY, for ec2 also $AWS_ACCESS_KEY_ID).")
@click.option("--provider-secret-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding the cloud provider's secret (default: $GITOPSQ_PROVIDER_SECRET, for ec2 also "
                   "$AWS_SECRET_ACCESS_KEY).")
@click.option("--provider-session-token-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding the session token of temporary credentials (default: $GITOPSQ_PROVIDER_SESSION_TOKEN, "
                   "for ec2 also $AWS_SESSION_TOKEN with $AWS_ACCESS_KEY_ID).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def serve(repo_location, branch, db, once, provider, provider_opt, local_slots, local_gpus, max_log_size, keep_workdirs,
          workdirs_max_size, run_user, no_run_user, max_nodes, public_url, allow_cidrs, insecure_public_url, http, tls_cert,
          tls_key, metrics_open, public_host, interval, webhook_secret_file, provider_key_file, provider_secret_file,
          provider_session_token_file, log_format) -> None:
    """Reconcile the config repo: submit, update, restart and cancel runs, and run the queue.

    Runs until SIGTERM or Ctrl-C, reacting to commits at once (a local repo is watched; a URL
    is fetched every --interval, or when a webhook arrives), and serves the API and dashboard.
    On exit, nodes keep running; the next start adopts them.

    With --once: one step (read the branch tip, apply the plan, watch nodes, admit from the
    queue), then exit.

    On its first start it creates the API token `admin` (write access) and keeps it in a 0600
    file beside the state database (gitopsq.db -> gitopsq.admin-token); `gitopsq token` makes more.

    Credentials are read once at start, from the --provider-*-file options or the environment;
    the daemon then re-executes itself (same pid) with an environment that holds none of them.
    Run as root, local process runs execute as --run-user, which cannot read the state directory;
    where runs are not isolated from the controller, the daemon says so at start and /healthz and
    the dashboard show it (see SECURITY.md).

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
    with _clean_stop(daemon=not once):
        if run_user and no_run_user:
            raise click.BadParameter("give --run-user or --no-run-user, not both", param_hint="--run-user")
        if allow_cidrs and provider == "local":
            raise click.BadParameter("opens cloud runs' ports; local runs listen on this machine", param_hint="--allow-cidr")
        from gitopsq.credentials import CredentialsError, serve_credentials

        try:  # first: a daemon with credentials in its environment re-executes itself without them here
            credentials = serve_credentials(provider_key_file, provider_secret_file, scrub=not once,
                                            session_token_file=provider_session_token_file)
        except CredentialsError as exc:
            raise click.BadParameter(str(exc)) from None
        from gitopsq.daemon import ignore_wake_signal
        from gitopsq.providers.base import ProviderConfigError
        from gitopsq.runtime import make_controller, state_path
        from gitopsq.source import SourceError
        from gitopsq.store import StateLocked, Store, controller_lock

        opts = _provider_options(provider, local_slots, local_gpus, provider_opt, max_nodes, public_url, max_log_size,
                                 keep_workdirs, workdirs_max_size, insecure_public_url, credentials.values, run_user,
                                 no_run_user, allow_cidrs)
        daemon_opts = None if once else _daemon_options(http, interval, webhook_secret_file, log_format, metrics_open,
                                                        tls_cert, tls_key)
        if daemon_opts:
            daemon_opts.max_log_size = max_log_size  # cloud nodes ship their logs to the daemon's HTTP server
        if daemon_opts and credentials.dropped:
            daemon_opts.warnings += (f"removed from the daemon's environment, where runs of its user could read them: "
                                     f"{', '.join(credentials.dropped)} (runs get secrets from `gitopsq secret set`; "
                                     f"git fetching the config repo, from a credential file or an SSH key)",)
        ignore_wake_signal()  # `secret set` may signal this process as soon as the lock names it
        path = state_path(db)
        try:
            with controller_lock(path):  # held until this process exits: one controller per state
                try:
                    controller = make_controller(repo_location, branch, Store(path), opts)
                except (ProviderConfigError, SourceError) as exc:  # bad --provider-opt or --repo, missing credentials
                    raise click.ClickException(str(exc)) from None
                _record_reach(controller, public_host, http)
                _record_provider(controller, opts)
                limits = tuple(f"provider {provider}: its driver cannot: {what}" for what in
                               getattr(controller.provider, "cannot", ()))
                if daemon_opts is None:
                    for line in limits:
                        click.echo(line, err=True)
                    _step_once(controller)
                    return
                daemon_opts.warnings += limits
                from gitopsq.daemon import run_daemon

                if not controller.provider.isolation.isolated:
                    daemon_opts.warnings += (f"runs are not isolated from the controller: {controller.provider.isolation.how}",)

                run_daemon(controller, daemon_opts)
        except StateLocked as exc:
            raise click.ClickException(str(exc)) from None


@contextmanager
def _clean_stop(daemon: bool):
    """From serve's first line until the loop takes the stop signals over (imports, which take a
    while on a busy machine, a first clone): a stop signal ends the daemon cleanly, exit 0."""
    if not daemon:
        yield
        return
    for sig in (signal.SIGINT, signal.SIGTERM):  # raise KeyboardInterrupt, which rolls back and kills a fetch
        signal.signal(sig, signal.default_int_handler)
    try:
        yield
    except KeyboardInterrupt:
        click.echo("gitopsq: stopped during start-up; nothing was left half-done (the next start goes on)", err=True)

def _record_reach(controller, public_host: str | None, http: str) -> None:
    """Where people reach this controller's runs, for `ps`, the API and the run page."""
    from gitopsq.connect import Reach
    from gitopsq.store import set_reach

    import socket

    host = public_host
    if not host and http != "off":
        bound = http.rpartition(":")[0].strip("[]")
        host = socket.gethostname() if bound in ("", "0.0.0.0", "::") else bound  # all addresses: this machine's name
    set_reach(controller.store, Reach(host or "localhost", controller.provider.name))


def _record_provider(controller, opts) -> None:
    """The provider as it was configured (never its credentials), for `plan --db` to ask the same one."""
    from gitopsq.livestate import record_provider
    from gitopsq.providercheck import ProviderCheck

    record_provider(controller.store, ProviderCheck(opts.name, dict(opts.options), opts.local_gpus, opts.local_slots))


def _daemon_options(http: str, interval: str, webhook_secret_file: str | None, log_format: str, metrics_open: bool = False,
                    tls_cert: str | None = None, tls_key: str | None = None):
    from pathlib import Path

    from gitopsq.daemon import DaemonOptions
    from gitopsq.spec import parse_duration

    if not re.fullmatch(r"[0-9]+[smhdw]?", interval):
        raise click.BadParameter("use seconds or 30s, 5m, 1h", param_hint="--interval")
    seconds = parse_duration(interval if interval[-1].isalpha() else int(interval))
    if bool(tls_cert) != bool(tls_key):
        raise click.BadParameter("give both --tls-cert and --tls-key, or neither", param_hint="--tls-cert/--tls-key")
    secret = None
    if webhook_secret_file:
        secret = Path(webhook_secret_file).read_bytes().strip()
        if not secret:  # an empty secret would make every signature easy to forge
            raise click.BadParameter(f"{webhook_secret_file} is empty: put the webhook's shared secret in it",
                                     param_hint="--webhook-secret-file")
    return DaemonOptions(None if http == "off" else http, float(seconds), secret, log_format, metrics_open, tls_cert, tls_key)


def _step_once(controller) -> None:
    from gitopsq.controller import StepFailed

    try:
        result = controller.step(fetch=True)
    except StepFailed as exc:  # what could be done was done; say what failed and exit 1
        for action in exc.result.actions:
            click.echo(f"{action.kind} {action.run}")
        raise click.ClickException(f"the step did not finish everything: {exc}") from None
    for action in result.actions:
        click.echo(f"{action.kind} {action.run}")
    if controller.provider_health:
        click.echo(controller.provider_health, err=True)


# The statuses of a submission: plan.ACTIVE then store.FINISHED (not imported: the CLI starts fast).
STATUSES = ("queued", "provisioning", "running", "stopping", "done", "failed", "cancelled")


def _state(db: str | None, readonly: bool = True):
    """The state for a command: read-only unless it records something; a wrong --db is an error."""
    from gitopsq.runtime import open_existing_store, open_store_readonly
    from gitopsq.store import StateError

    try:
        return open_store_readonly(db) if readonly else open_existing_store(db)
    except StateError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@db_option
@click.option("--all", "include_all", is_flag=True, help="Include runs whose file is gone.")
@click.option("--status", type=click.Choice(STATUSES), help="Only runs whose current submission has this status.")
@json_option
def ps(db, include_all, status, as_json) -> None:
    """List runs in queue order: active ones by priority then first queued, then finished ones."""
    from gitopsq.store import listing
    from gitopsq.views import print_json, runs_table

    rows = listing(_state(db), include_all, status)
    print_json(rows) if as_json else runs_table(rows)


@main.command()
@click.argument("name")
@db_option
@json_option
def history(name, db, as_json) -> None:
    """Every submission of run NAME, oldest first, with status, reason, log file and working directory.

    The LOG and WORKDIR columns show when the terminal is wide enough (WORKDIR says `pruned` once
    the retention policy deleted it); --json always has log_path, workdir and workdir_pruned.
    """
    from gitopsq.store import submissions
    from gitopsq.views import history_table, print_json

    rows = submissions(_state(db), run=name)
    if not rows:
        raise click.ClickException(f"no run named {name!r}")
    print_json(rows) if as_json else history_table(rows)


@main.command()
@click.argument("name")
@db_option
@click.option("--submission", "number", type=int, help="Submission number (default: the latest).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the submission ends (then exit 0).")
@click.option("--tail", type=click.IntRange(min=0), metavar="N", help="Start with the last N lines of the latest attempt.")
def logs(name, db, number, follow, tail) -> None:
    """Print the output of run NAME (every attempt of the submission, oldest first).

    With -f, new output is printed as it comes, across retries, until the submission ends; a
    submission still queued is waited for. Every secret value the submission's attempts were
    given is shown as ***.
    """
    from gitopsq.logfollow import Note, read_submission
    from gitopsq.secretstore import SecretKeyError, SecretStore
    from gitopsq.store import attempt_logs

    store = _state(db)
    rows = store.history(name)
    if not rows:
        raise click.ClickException(f"no run named {name!r}")
    sub = rows[-1] if number is None else next((r for r in rows if r["number"] == number), None)
    if sub is None:
        raise click.ClickException(f"run {name!r} has no submission {number}")
    if not attempt_logs(store, sub["id"]):
        if not follow or sub["status"] not in ("queued", "provisioning", "running", "stopping"):
            raise click.ClickException(_no_log(name, dict(sub)))
        click.echo(f"({_no_log(name, dict(sub))}; waiting for it to start)", err=True)
    secrets = lambda: SecretStore(store).mask_values(sub["id"])
    try:
        secrets()
        for text in read_submission(lambda: store, sub["id"], secrets, follow=follow, tail=tail):
            click.echo(text, nl=False, err=isinstance(text, Note))
    except SecretKeyError as exc:
        raise click.ClickException(f"{exc}; the log may hold secrets that cannot be masked, so it is not shown") from None
    if follow:
        ended = store.submission(sub["id"])
        click.echo(f"--- {name} submission {sub['number']} {ended['status']}"
                   + (f" (exit code {ended['exit_code']})" if ended["exit_code"] is not None else ""), err=True)


def _no_log(name: str, sub: dict) -> str:
    """Why a submission has no output to show: it never started, and what stopped it."""
    import time

    from gitopsq.explain import end_reason, wait_reason
    from gitopsq.store import describe

    head = f"{name} submission {sub['number']} has no log: it never started"
    if sub["status"] == "queued":
        return f"{head} (queued: {wait_reason(describe(dict(sub)), time.time())})"
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

    store = _state(db, readonly=False)
    if store.run(name) is None:
        raise click.ClickException(f"no run named {name!r}")
    if not record_touch(store, name, time.time()):
        raise click.ClickException(f"run {name!r} is not active")
    click.echo(f"{name}: activity recorded")


@main.command()
@click.argument("submission_id", type=int)
@click.option("--token", required=True, help="The token of the submission's current attempt (given to its node in the user-data).")
@click.option("--exit-code", required=True, type=int, help="The exit code of the run's commands.")
@db_option
def report(submission_id, token, exit_code, db) -> None:
    """Record a cloud node's exit code for SUBMISSION_ID; a wrong token (or an earlier attempt's) changes nothing."""
    import time

    from gitopsq.controller import record_report
    from gitopsq.runtime import open_store

    if not record_report(open_store(db), submission_id, token, exit_code, time.time()):
        raise click.ClickException("report refused: unknown submission, wrong token, or not running")
    click.echo(f"submission {submission_id}: exit code {exit_code} recorded")


# --- secrets ------------------------------------------------------------------------------------

@main.group()
def secret() -> None:
    """Secrets that runs reference: `env: [HF_TOKEN]` or `KEY=${{ secrets.name }}`.

    Values are stored encrypted in the state database, under a key kept in a file of its own
    beside it (gitopsq.db -> gitopsq.key, 0600): keep that file with the database, since the
    database alone cannot give them back. A value is never shown again; a run gets it at launch,
    and the logs that `logs`, the API and the dashboard serve show it as ***.
    """


@secret.command("set")
@click.argument("name")
@click.option("--from-file", "from_file", type=click.Path(exists=True, dir_okay=False),
              help="Take the value from this file, byte for byte (an ssh key, a JSON credential).")
@db_option
def secret_set(name, from_file, db) -> None:
    """Set secret NAME (creating or replacing it), and wake a running controller.

    The value is read from stdin, without its trailing newline (`printf %s "$TOKEN" | gitopsq
    secret set HF_TOKEN`, or `gitopsq secret set HF_TOKEN < token.txt`); on a terminal it is
    asked for without echo. Runs waiting for NAME are tried at once; active runs keep the value
    they started with, their next attempt or submission gets the new one. Values shorter than 4
    characters are accepted but cannot be masked in logs.
    """
    from gitopsq.masking import MIN_MASKED, too_short_to_mask
    from gitopsq.runtime import open_store, state_path
    from gitopsq.secretstore import SecretError, SecretKeyError, SecretStore, check_name
    from gitopsq.wakeup import wake_controller

    try:
        check_name(name)
    except SecretError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    value = _secret_value(name, from_file)
    try:
        created = SecretStore(open_store(db)).set(name, value)
    except (SecretError, SecretKeyError) as exc:
        raise click.ClickException(str(exc)) from None
    if too_short_to_mask(value):
        click.echo(f"warning: the value of {name} is shorter than {MIN_MASKED} characters: it will not be masked in logs",
                   err=True)
    click.echo(f"Secret {name} {'created' if created else 'updated'}.")
    pid = wake_controller(state_path(db))
    if pid is not None:
        click.echo(f"Woke the controller (pid {pid}): runs waiting for {name} are tried now.")


def _secret_value(name: str, from_file: str | None) -> str:
    """The value from --from-file (as is), a no-echo prompt, or stdin (trailing newline dropped)."""
    import sys

    if from_file:
        from pathlib import Path

        try:
            data, source = Path(from_file).read_bytes(), from_file
        except OSError as exc:
            raise click.ClickException(f"cannot read {from_file}: {exc.strerror or exc}") from None
    elif sys.stdin.isatty():
        return click.prompt(f"Value of {name} (not echoed)", hide_input=True, prompt_suffix=": ")
    else:
        data, source = sys.stdin.buffer.read(), "stdin"
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise click.ClickException(f"{source} is not UTF-8 text: a secret reaches a run as an environment variable") from None


@secret.command("list")
@db_option
@json_option
def secret_list(db, as_json) -> None:
    """List secrets by name: when each was set and updated, and which runs reference it.

    A name that runs reference but that is not set is listed as missing (those runs wait in
    the queue with reason secret-missing). Values are never shown.
    """
    from gitopsq.secretstore import secret_listing
    from gitopsq.views import print_json, secrets_table

    rows = secret_listing(_state(db))
    print_json(rows) if as_json else secrets_table(rows)


@secret.command("rm")
@click.argument("name")
@db_option
def secret_rm(name, db) -> None:
    """Remove secret NAME (an unknown name is an error).

    Runs that reference it wait with reason secret-missing at their next launch; active runs
    keep the value they started with, and their logs stay masked.
    """
    from gitopsq.secretstore import SecretStore, secret_listing

    store = _state(db, readonly=False)
    if not SecretStore(store).remove(name):
        raise click.ClickException(f"no secret named {name!r}")
    click.echo(f"Secret {name} removed.")
    runs = next((row["runs"] for row in secret_listing(store) if row["name"] == name), [])
    if runs:
        click.echo(f"warning: still referenced by {', '.join(runs)}: they wait (secret-missing) until it is set again",
                   err=True)


# --- API tokens ---------------------------------------------------------------------------------

@main.group()
def token() -> None:
    """Tokens for the HTTP API and the dashboard (`Authorization: Bearer TOKEN`).

    A write token may do everything the API offers; a --read-only one may only read (runs,
    submissions, logs on the dashboard, secret names). Only a hash of each token is stored: a
    token is shown once, when it is created. On its first start `serve` creates a write token
    named admin and keeps it in a 0600 file beside the state database (gitopsq.db ->
    gitopsq.admin-token).
    """


@token.command("create")
@click.argument("name")
@click.option("--read-only", is_flag=True, help="The token may read the API and the dashboard, never change anything.")
@db_option
def token_create(name, read_only, db) -> None:
    """Create a token named NAME and print it (only this once: keep it).

    The token alone goes to stdout (`gitopsq token create ci > ci.token`); use it as
    `Authorization: Bearer TOKEN`, or paste it into the dashboard's login form.
    """
    from gitopsq.runtime import open_store
    from gitopsq.tokens import TokenError, create

    try:
        secret = create(open_store(db), name, read_only)
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(secret)
    click.echo(f"Token {name} created ({'read-only' if read_only else 'write'}); it is not shown again.", err=True)


@token.command("list")
@db_option
@json_option
def token_list(db, as_json) -> None:
    """List tokens: name, read-only or write, when created and last used (never the tokens)."""
    from dataclasses import asdict

    from gitopsq.tokens import listing
    from gitopsq.views import print_json, tokens_table

    rows = listing(_state(db))
    print_json([{**asdict(row), "access": row.access} for row in rows]) if as_json else tokens_table(rows)


@token.command("revoke")
@click.argument("name")
@db_option
def token_revoke(name, db) -> None:
    """Revoke token NAME: a running daemon refuses it from its next request on."""
    from gitopsq.tokens import revoke

    if not revoke(_state(db, readonly=False), name):
        raise click.ClickException(f"no token named {name!r}")
    click.echo(f"Token {name} revoked.")


def _add_run_commands() -> None:
    """stop and rerun live in gitopsq.cli_runs (this module has enough jobs)."""
    from gitopsq.cli_runs import rerun, stop

    main.add_command(stop)
    main.add_command(rerun)


_add_run_commands()
