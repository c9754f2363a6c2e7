"""The `gitopsq` command line: thin click wrappers over the library."""

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
    machine through the embedded local provider: `gitopsq serve --repo DIRECTORY`.
    """
    from gitopsq.initrepo import init_repo

    try:
        sha = init_repo(directory)
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
        click.echo(f"  {name}: {json_short(old)} -> {json_short(new)}")
    click.echo(applied.content.decode(), nl=False)


def json_short(value) -> str:
    import json

    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 70 else text[:67] + "..."
