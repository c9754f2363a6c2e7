"""A run's working tree from git: its `repos` and `files`, at the commit its spec came from.

`prepare(spec, commit, repo, dest, credentials=..., cache_dir=...)` fills `dest`:

- a local repo (`.`, `..`, a folder) is the config repo's tree at `commit`, put in place with
  `git archive | tar -x`: streamed, without history, never a clone of the config repo;
- a URL repo is checked out at its `hash`, else its `branch`, else the remote's default branch,
  through a bare mirror per URL in `cache_dir` (locked while fetched, so concurrent prepares of
  one URL are safe), also without history;
- `files` are copied from the config repo at `commit`. What belongs outside the working
  directory (`/x`, `~/x`, `../x`) is staged in `outside_dir(dest)` and listed in
  `Prepared.outside`, for a provider with a filesystem of its own to place; nothing is written
  there. No write ever goes through a symlink, so a tree cannot redirect a later entry's files
  out of `dest`.

`archive(dest)` packs a prepared tree and its staged entries into one .tar.gz for a cloud node
(layout in gitopsq.workspace.bundle).

Credentials for private URLs come only from `credentials(key)` (the controller's secret store),
never from the controller's own ~/.ssh, ssh agent, credential helpers, git config or
environment. The key is `git.<host>` (`git.github.com`, `git.gitlab.example.com`; no port):
for https, a token (user `x-access-token`, or the URL's user) or `user:token`; for ssh or
`git@host:path`, a private key. A credential never appears in a command line, the mirror's
config, a log line or an error message.

A failure (authentication, network, unknown branch or hash, timeout, a symlink in the way)
raises WorkspaceError with one line naming the entry and the reason.
"""

from gitopsq.workspace.assemble import Checkout, Outside, Prepared, outside_dir, prepare, repo_id
from gitopsq.workspace.auth import credential_key
from gitopsq.workspace.bundle import archive
from gitopsq.workspace.gitproc import WorkspaceError

__all__ = ["prepare", "Prepared", "Checkout", "Outside", "archive", "outside_dir", "repo_id", "credential_key",
           "WorkspaceError"]
