"""`gitopsq stop` and `gitopsq rerun`: imperative actions on a run, audited (gitopsq.intents).

Either through a running controller's API (--server, a write token: the token's name is who did
it) or straight into the state on this machine (--db: the OS user is who did it). Both only
record the intent and wake the controller, which applies it at its next step.
"""

import click

from gitopsq.cliopts import db_option, server_option, token_option


def _ask(kind: str, name: str, db: str | None, server: str | None, token: str | None) -> None:
    if server:
        from gitopsq.client import Api, ApiError

        try:
            api = Api(server, token)
            intent = api.post(api.run_path(name, kind))
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{_asked(kind, name, intent)} as token {intent['actor']}; {server} applies it at its next step.")
        return
    import time

    from gitopsq.intents import IntentRefused, local_actor, request_rerun, request_stop
    from gitopsq.runtime import open_existing_store, state_path
    from gitopsq.store import StateError
    from gitopsq.wakeup import wake_controller

    try:
        store = open_existing_store(db)
        record = request_stop if kind == "stop" else request_rerun
        intent = record(store, name, local_actor(), "cli", time.time()).as_dict()
    except (IntentRefused, StateError) as exc:
        raise click.ClickException(str(exc)) from None
    pid = wake_controller(state_path(db))
    after = (f"the controller (pid {pid}) applies it now" if pid is not None
             else "no controller runs on this state: it applies it when it starts")
    click.echo(f"{_asked(kind, name, intent)} as {intent['actor']}; {after}.")


def _asked(kind: str, name: str, intent: dict) -> str:
    if kind == "stop":
        return f"Stop of {name} asked"
    return f"Rerun of {name} asked"


@click.command()
@click.argument("name")
@db_option
@server_option
@token_option
def stop(name, db, server, token) -> None:
    """Stop the active submission of run NAME.

    The run stays stopped until its file changes again: the next change reconciles as usual (an
    edit submits it anew). `ps` shows it as stopped by whom, and `history` and the API keep who
    did it: the token's name with --server (a write token), else this OS user.
    """
    _ask("stop", name, db, server, token)


@click.command()
@click.argument("name")
@db_option
@server_option
@token_option
def rerun(name, db, server, token) -> None:
    """Submit run NAME again, with the spec its file holds on the branch now.

    For a task that ended and whose file did not change (a comment-only commit does nothing). An
    active submission is stopped first. The new submission records who asked: the token's name
    with --server (a write token), else this OS user.
    """
    _ask("rerun", name, db, server, token)
