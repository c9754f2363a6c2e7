"""The `gitopsq` command line: thin click wrappers over the library."""

import click

from gitopsq import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gitopsq")
def main() -> None:
    """gitopsq: commit run files to git; gitopsq validates, queues and provisions them."""
