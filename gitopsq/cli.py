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
