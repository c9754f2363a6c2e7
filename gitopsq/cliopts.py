"""Options shared by the `gitopsq` commands (gitopsq.cli, gitopsq.cli_runs)."""

import click

db_option = click.option("--db", envvar="GITOPSQ_DB", type=click.Path(dir_okay=False),
                         help="State database (default: $GITOPSQ_DB, else ~/.local/state/gitopsq/gitopsq.db).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
server_option = click.option("--server", metavar="URL",
                             help="A running controller's HTTP API (as `serve --http` listens), instead of --db.")
token_option = click.option("--token", envvar="GITOPSQ_TOKEN", metavar="TOKEN",
                            help="The API token for --server (default: $GITOPSQ_TOKEN): `gitopsq token create NAME`.")
