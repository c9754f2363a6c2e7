"""A cloud node's work, as user-data: a bash script that fetches the run's inputs from the
controller, runs the commands (inside `image` with docker when one is set), reports the exit
code to `--public-url` with the submission's token, and powers the node off.

The script never carries a secret value or a git credential: see `user_data`.
"""

from __future__ import annotations

import base64
import json
import math
import shlex
from pathlib import Path

from gitopsq.providers.base import Launch, cluster_env, image_registry, run_env, run_script, secret_env_names
from gitopsq.providers.cloud_logs import CHUNK_BYTES
from gitopsq.providers.volumes import container_path
from gitopsq.spec import RunSpec
from gitopsq.workspace import outside_dir

__all__ = ["DOWNLOAD_TRIES", "container_image", "user_data"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def container_image(spec: RunSpec) -> str | None:
    """The image a cloud run runs in: its own, or for `python: X.Y` the official python image."""
    if spec.image:
        return spec.image
    return f"python:{spec.python}" if spec.python else None


def user_data(launch: Launch, public_url: str, gpus_per_node: int | None = None) -> str:
    """The cloud-init script of one node: fetch the run's inputs, run the commands, report the
    exit code, power off.

    The user-data never holds a secret value or a git credential (anyone who can read the
    instance's attributes can read it): it exports only the run's env without the variables that
    hold secrets. When the run has those, or a working tree (repos, files), the node downloads
    them from the controller before running anything, authenticated by its submission's token
    (`Authorization: Bearer`): GET {public_url}/api/submissions/{id}/inputs/env (export lines,
    sourced, then deleted) and .../inputs/tree (the tree as packed by gitopsq.workspace.archive),
    each tried a few times (GITOPSQ_DOWNLOAD_BACKOFF seconds, default 5, times the try). A
    download that fails fails the run: its log says so and the exit code reported is 1.

    The tree's work/ is the work directory; for a run on the node itself abs/<p> is written to
    /<p>, home/<p> to $HOME/<p> and up/<n>/<p> n folders above the work directory; in a container
    those are mounted read-only where the run file says instead.

    The commands run as `bash script.sh` in the work directory (inside `image` through docker when
    set, the work directory mounted at /work) with the run's env; only those variables are
    exported, so the report token stays out of the run's environment. Their output goes to
    run.log, which the node keeps, and is shipped to the controller while they run: every
    GITOPSQ_LOG_INTERVAL seconds (default 2) what it has not confirmed yet, POST
    {public_url}/api/submissions/{id}/log?offset=N in chunks of at most 64 KiB (see
    gitopsq.providers.cloud_logs); when the controller cannot be reached, the rest waits on disk
    for the next try; once the commands ended the end of the log is sent with `final=1` (tried a
    few times: what still cannot be sent is said in the controller's copy).

    A spot node (spot_policy spot or auto) polls its metadata endpoint
    (GITOPSQ_METADATA_URL, default http://169.254.169.254, every GITOPSQ_SPOT_POLL seconds,
    default 5) for EC2's interruption notice (latest/meta-data/spot/instance-action), writes it in
    the log and POSTs it to .../interruption, so the run's end is an interruption, not a failure.

    The report is POST {public_url}/api/submissions/{id}/report with JSON {"token", "exit_code"},
    by curl or else python3, retried; then `shutdown -h now`, unless GITOPSQ_NO_POWEROFF=1.
    GITOPSQ_WORKDIR (default /var/lib/gitopsq), GITOPSQ_REPORT_BACKOFF (seconds, default 5) and
    GITOPSQ_DOWNLOAD_BACKOFF exist so the script can be exercised off a cloud node.

    dstack's cluster variables (DSTACK_NODES_NUM, DSTACK_NODE_RANK, DSTACK_GPUS_PER_NODE: the
    `gpus_per_node` of its size, ...) are in the env; a single node is its own master
    (DSTACK_MASTER_NODE_IP: its first address). A node of a cluster run (`nodes: N`) cannot know
    the others' addresses when it is created: it downloads them (GET .../inputs/cluster, export
    lines of DSTACK_MASTER_NODE_IP and DSTACK_NODES_IPS), which the controller serves once every
    node exists, waiting for them up to GITOPSQ_CLUSTER_TRIES times GITOPSQ_CLUSTER_BACKOFF seconds
    (60 x 5 by default); and it reports, and ships its log (log?rank=R&offset=N, a log of its own
    on the controller), with its rank.
    """
    spec = launch.spec
    env = run_env(spec, launch, with_secrets=False)
    if gpus_per_node is not None:
        env.update(cluster_env(spec.nodes, launch.rank, gpus_per_node))
    downloaded = secret_env_names(spec)
    login = bool(spec.registry_auth) and container_image(spec) is not None
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())  # names: the schema's pattern
    submission = f"{public_url.rstrip('/')}/api/submissions/{launch.submission_id}"
    url = f"{submission}/report"
    report = {"token": launch.token, **({"rank": launch.rank} if spec.nodes > 1 else {})}
    body_head = json.dumps(report)[:-1] + ', "exit_code": '
    image = container_image(spec)
    outside = _outside_entries(launch)
    if image:
        gpus = "--gpus all " if spec.resources.gpu_count else ""
        if spec.resources.shm_size is not None:
            gpus += f"--shm-size {int(math.ceil(spec.resources.shm_size * 1024))}m "
        addresses = ["DSTACK_MASTER_NODE_IP", "DSTACK_NODES_IPS"]
        env_flags = " ".join(f"-e {k}" for k in dict.fromkeys(["PYTHONUNBUFFERED", *env, *addresses, *downloaded]))
        mounts = "".join(f'-v "$GITOPSQ_DIR/bundle/"{shlex.quote(f"{member}:{container_path(dst)}:ro")} '
                         for member, dst in outside)
        mounts += "".join(f"-v {shlex.quote(f'{v.instance_path}:{container_path(v.path)}')} " for v in _volumes(spec))
        run = f"""if ! command -v docker >/dev/null 2>&1; then
    (dnf install -y docker || yum install -y docker || (apt-get update && apt-get install -y docker.io)) >/dev/null 2>&1
    systemctl start docker >/dev/null 2>&1 || service docker start >/dev/null 2>&1
  fi
{_registry_login(image) if login else ""}  exec docker run --rm --network host {gpus}-v "$GITOPSQ_DIR/work:/work" {mounts}-v "$GITOPSQ_DIR/script.sh:/gitopsq/script.sh:ro" -w /work {env_flags} {shlex.quote(image)} bash /gitopsq/script.sh"""
    else:
        run = _volume_links(spec) + 'exec bash "$GITOPSQ_DIR/script.sh"'
    fetch = _fetch_inputs(launch, bool(downloaded) or login, outside, in_container=bool(image))
    fetch = _addresses(spec) + fetch
    spot = spec.spot_policy in ("spot", "auto")
    return f"""#!/bin/bash
# gitopsq node: run {launch.run}, submission {launch.number} (id {launch.submission_id})
GITOPSQ_DIR="${{GITOPSQ_WORKDIR:-/var/lib/gitopsq}}"
mkdir -p "$GITOPSQ_DIR/work"
: >> "$GITOPSQ_DIR/run.log"
echo {_b64(run_script(spec))} | base64 -d > "$GITOPSQ_DIR/script.sh"
echo {_b64(exports)} | base64 -d > "$GITOPSQ_DIR/env.sh"
token={shlex.quote(launch.token)}
log_rank={shlex.quote(f"rank={launch.rank}&") if spec.nodes > 1 else ""}
submission={shlex.quote(submission)}
inputs="$submission/inputs"
{_FETCH if fetch else ""}{_POST}{_SHIP}{_WATCH_SPOT if spot else ""}( while :; do ship >/dev/null 2>&1; sleep "${{GITOPSQ_LOG_INTERVAL:-2}}"; done ) &
shipper=$!
{"watch_spot >/dev/null 2>&1 &" + chr(10) + "watcher=$!" + chr(10) if spot else ""}(
  cd "$GITOPSQ_DIR/work" || exit 1
{fetch}{_make_volumes(spec)}  export PYTHONUNBUFFERED=1
  . "$GITOPSQ_DIR/env.sh"
  {run}
) 2>&1 < /dev/null | tee -a "$GITOPSQ_DIR/run.log"
code=${{PIPESTATUS[0]}}
echo "gitopsq: commands exited with $code"
kill $shipper{" $watcher" if spot else ""} 2>/dev/null
wait $shipper{" $watcher" if spot else ""} 2>/dev/null
for attempt in 1 2 3 4 5 6; do
  ship final && break
  echo "gitopsq: sending the log failed (try $attempt of 6); it stays in $GITOPSQ_DIR/run.log" >&2
  [ "$attempt" = 6 ] || sleep $((attempt * ${{GITOPSQ_REPORT_BACKOFF:-5}}))
done
url={shlex.quote(url)}
body={shlex.quote(body_head)}"$code}}"
for attempt in 1 2 3 4 5 6; do
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -m 20 -X POST -H 'Content-Type: application/json' --data "$body" "$url" >/dev/null && break
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), headers={{"Content-Type": "application/json"}}, method="POST")
urllib.request.urlopen(req, timeout=20).read()' "$url" "$body" && break
  fi
  echo "gitopsq: report attempt $attempt failed" >&2
  [ "$attempt" = 6 ] || sleep $((attempt * ${{GITOPSQ_REPORT_BACKOFF:-5}}))
done
if [ "${{GITOPSQ_NO_POWEROFF:-0}}" != 1 ]; then
  sync
  shutdown -h now || poweroff
fi
exit "$code"
"""


# `post WHAT FILE`: POST FILE's bytes to $submission/WHAT with the node's token, by curl or else
# python3; prints the HTTP status and the answer's body on one line; fails when nothing answered.
_POST = """post() {
  if command -v curl >/dev/null 2>&1; then
    local answer
    answer=$(curl -sS --connect-timeout 10 -m 60 -X POST -H "Authorization: Bearer $token" \\
      -H 'Content-Type: application/octet-stream' --data-binary @"$2" -w '\\n%{http_code}' "$submission/$1") || return 1
    printf '%s %s\\n' "${answer##*$'\\n'}" "${answer%$'\\n'*}"
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import sys, urllib.error, urllib.request
with open(sys.argv[3], "rb") as f:
    req = urllib.request.Request(sys.argv[1], data=f.read(), method="POST",
                                 headers={"Authorization": "Bearer " + sys.argv[2], "Content-Type": "application/octet-stream"})
try:
    with urllib.request.urlopen(req, timeout=60) as answer:
        print(answer.status, answer.read().decode(errors="replace").replace(chr(10), " "))
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode(errors="replace").replace(chr(10), " "))' "$submission/$1" "$token" "$2" 2>/dev/null
  else
    return 1
  fi
}
"""

# `ship [final]`: send the controller what it does not have of run.log yet, from the offset it
# confirmed last (log.sent), in chunks of at most LOG_CHUNK bytes. It stores a chunk only where
# its copy ends and answers the offset it has (409 when the chunk starts beyond: resend from
# there), so a chunk sent twice is stored once. `final`: the log is whole; its end says so.
LOG_CHUNK = CHUNK_BYTES
_SHIP = f"""ship() {{
  local sent size chunk length last answer status offset
  chunk="$GITOPSQ_DIR/log.chunk.$BASHPID"
  while :; do
    sent=$(cat "$GITOPSQ_DIR/log.sent" 2>/dev/null)
    case "$sent" in ''|*[!0-9]*) sent=0 ;; esac
    size=$(wc -c < "$GITOPSQ_DIR/run.log")
    [ "$sent" -lt "$size" ] || [ -n "$1" ] || return 0
    tail -c +$((sent + 1)) "$GITOPSQ_DIR/run.log" | head -c {LOG_CHUNK} > "$chunk"
    length=$(wc -c < "$chunk")
    last=""
    [ -n "$1" ] && [ $((sent + length)) -ge "$size" ] && last="&final=1"
    answer=$(post "log?${{log_rank}}offset=$sent$last" "$chunk") || {{ rm -f "$chunk"; return 1; }}
    rm -f "$chunk"
    status=${{answer%% *}}
    offset=$(printf '%s' "$answer" | sed -n 's/.*"offset": *\\([0-9][0-9]*\\).*/\\1/p')
    case "$status" in 200|409) ;; *) return 1 ;; esac
    [ -n "$offset" ] && [ "$offset" -le "$size" ] || return 1
    echo "$offset" > "$GITOPSQ_DIR/log.sent"
    if [ -n "$last" ] && [ "$status" = 200 ]; then return 0; fi
    if [ "$offset" = "$sent" ] && [ "$length" -gt 0 ]; then return 1; fi  # no progress: try again later
  done
}}
"""

# `watch_spot`: poll the metadata endpoint for the provider's interruption notice (IMDSv2 when
# it answers a token, else v1); once one comes, say it in the log and tell the controller.
_WATCH_SPOT = """meta_get() {
  local meta="${GITOPSQ_METADATA_URL:-http://169.254.169.254}" imds
  if command -v curl >/dev/null 2>&1; then
    imds=$(curl -fsS -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$meta/latest/api/token" 2>/dev/null)
    curl -fsS -m 2 ${imds:+-H "X-aws-ec2-metadata-token: $imds"} "$meta/latest/$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$meta/latest/$1" 2>/dev/null
  fi
}
watch_spot() {
  local notice attempt
  while :; do
    notice=$(meta_get meta-data/spot/instance-action)
    if [ -n "$notice" ]; then
      echo "gitopsq: the provider takes this node back: $notice" >> "$GITOPSQ_DIR/run.log"
      printf '%s' "$notice" > "$GITOPSQ_DIR/notice.json"
      for attempt in 1 2 3 4 5; do
        case "$(post interruption "$GITOPSQ_DIR/notice.json")" in 200*) return 0 ;; esac
        sleep 2
      done
      return 1
    fi
    sleep "${GITOPSQ_SPOT_POLL:-5}"
  done
}
"""

# `fetch WHAT FILE`: GET $inputs/WHAT with the node's token into FILE, by curl or else python3,
# tried DOWNLOAD_TRIES times. Never prints the token.
DOWNLOAD_TRIES = 5
_FETCH = f"""fetch() {{
  local attempt
  for ((attempt = 1; attempt <= ${{GITOPSQ_DOWNLOAD_TRIES:-{DOWNLOAD_TRIES}}}; attempt++)); do
    if command -v curl >/dev/null 2>&1; then
      curl -fsS --connect-timeout 20 -m 900 -H "Authorization: Bearer $token" -o "$2" "$inputs/$1" && return 0
    elif command -v python3 >/dev/null 2>&1; then
      python3 -c 'import shutil, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={{"Authorization": "Bearer " + sys.argv[2]}})
try:
    with urllib.request.urlopen(req, timeout=900) as answer, open(sys.argv[3], "wb") as out:
        shutil.copyfileobj(answer, out)
except Exception as exc:
    sys.exit(f"python3: {{exc}}")' "$inputs/$1" "$token" "$2" && return 0
    else
      echo "gitopsq: neither curl nor python3 is on this node"
    fi
    echo "gitopsq: downloading the run's $1 failed (try $attempt of ${{GITOPSQ_DOWNLOAD_TRIES:-{DOWNLOAD_TRIES}}})"
    [ "$attempt" -ge "${{GITOPSQ_DOWNLOAD_TRIES:-{DOWNLOAD_TRIES}}}" ] || sleep $((attempt * ${{GITOPSQ_DOWNLOAD_BACKOFF:-5}}))
  done
  return 1
}}
"""


def _addresses(spec: RunSpec) -> str:
    """Lines that set DSTACK_MASTER_NODE_IP and DSTACK_NODES_IPS: a single node's own address, or
    a cluster's, downloaded from the controller once all its nodes exist (a failure fails the run)."""
    if spec.nodes == 1:
        lines = ['read -r DSTACK_MASTER_NODE_IP _ < <(hostname -I 2>/dev/null)',
                 'export DSTACK_MASTER_NODE_IP="${DSTACK_MASTER_NODE_IP:-127.0.0.1}"',
                 'export DSTACK_NODES_IPS="$DSTACK_MASTER_NODE_IP"']
    else:
        lines = ['for ((wait = 1; wait <= ${GITOPSQ_CLUSTER_TRIES:-60}; wait++)); do',
                 '  (umask 077 && GITOPSQ_DOWNLOAD_TRIES=1 fetch cluster "$GITOPSQ_DIR/cluster.env" 2>/dev/null) && break',
                 '  echo "gitopsq: waiting for the other nodes of the cluster run"',
                 '  rm -f "$GITOPSQ_DIR/cluster.env"; sleep "${GITOPSQ_CLUSTER_BACKOFF:-5}"',
                 "done",
                 'if [ ! -s "$GITOPSQ_DIR/cluster.env" ]; then',
                 '  echo "gitopsq: the addresses of the cluster run\'s nodes never came from $inputs/cluster; the run did not start"',
                 "  exit 1",
                 "fi",
                 '. "$GITOPSQ_DIR/cluster.env"']
    return "".join(f"  {line}\n" for line in lines)


def _volumes(spec: RunSpec):
    """The run's instance volumes: folders of the node (a node is one run's: they last as long as it)."""
    return spec.volumes


def _make_volumes(spec: RunSpec) -> str:
    """Lines that create each volume's folder; an optional one that is missing is left out."""
    lines = []
    for volume in spec.volumes:
        folder = shlex.quote(volume.instance_path)
        lines.append(f"[ -e {folder} ] || mkdir -p {folder}" if not volume.optional else
                     f"[ -e {folder} ] || echo 'gitopsq: optional volume {volume.instance_path} is not on this node'")
    return "".join(f"  {line}\n" for line in lines)


def _volume_links(spec: RunSpec) -> str:
    """A run on the node itself sees each volume through a link at its path (relative to the
    work directory, or absolute: the node is the run's own)."""
    lines = []
    for volume in spec.volumes:
        folder = shlex.quote(volume.instance_path)
        link = '"$HOME"' + shlex.quote(volume.path[1:]) if volume.path.startswith("~") else shlex.quote(volume.path)
        lines.append(f"if [ -e {folder} ]; then mkdir -p \"$(dirname {link})\" && ln -sfn {folder} {link}; fi")
    return "".join(f"{line}\n  " for line in lines)


def _registry_login(image: str) -> str:
    """`docker login` for the run's registry with the credentials downloaded with its secrets
    (from stdin: never on a command line), then forgotten by the shell."""
    registry = shlex.quote(image_registry(image))
    return (f'  printf %s "$GITOPSQ_REGISTRY_PASSWORD" | docker login --username "$GITOPSQ_REGISTRY_USERNAME" '
            f'--password-stdin {registry} >/dev/null || {{ echo "gitopsq: docker login to {image_registry(image)} failed"; exit 1; }}\n'
            f"  unset GITOPSQ_REGISTRY_USERNAME GITOPSQ_REGISTRY_PASSWORD\n")


def _outside_entries(launch: Launch) -> list[tuple[str, str]]:
    """(member in the bundle, dst as written) of each tree entry outside the working directory."""
    if launch.tree is None:
        return []
    staged = outside_dir(launch.tree)
    return [(Path(source).relative_to(staged).as_posix(), dst) for source, dst in launch.tree_outside]


def _fetch_inputs(launch: Launch, secrets: bool, outside: list[tuple[str, str]], in_container: bool) -> str:
    """The lines (in the run's subshell, in the work directory) that download and place its inputs."""
    lines = []
    if secrets:
        lines += ['if ! (umask 077 && fetch env "$GITOPSQ_DIR/secrets.env"); then',
                  '  echo "gitopsq: cannot download the run\'s secrets from $inputs/env; the run did not start"',
                  "  exit 1",
                  "fi",
                  '. "$GITOPSQ_DIR/secrets.env"',
                  'rm -f "$GITOPSQ_DIR/secrets.env"']
    if launch.tree is not None:
        tarball = '"$GITOPSQ_DIR/tree.tar.gz"'
        lines += [f"if ! (umask 077 && fetch tree {tarball}); then",
                  '  echo "gitopsq: cannot download the run\'s working tree from $inputs/tree; the run did not start"',
                  "  exit 1",
                  "fi"]
        # Members are stripped of their first part: the folders they land in keep their own modes.
        places = [("work", ".")]
        if in_container:  # mounted read-only from here, where the run file says
            places += [(top, '"$GITOPSQ_DIR/bundle"') for top in sorted({m.split("/")[0] for m, _ in outside})]
            lines.append('mkdir -p "$GITOPSQ_DIR/bundle"')
        else:
            for top in sorted({"/".join(m.split("/")[:2]) if m.startswith("up/") else m.split("/")[0] for m, _ in outside}):
                if top == "abs":
                    places.append(("abs", "/"))
                elif top == "home":
                    places.append(("home", '"${HOME:-/root}"'))
                else:  # up/<n>: n folders above the work directory
                    places.append((top, '"$GITOPSQ_DIR/work"/' + "/".join([".."] * int(top.split("/")[1]))))
        for member, folder in places:
            strip = member.count("/") + 1 if folder != '"$GITOPSQ_DIR/bundle"' else 0
            lines.append(f"tar -xzf {tarball} --no-overwrite-dir --strip-components={strip} -C {folder} {member} || "
                         f"{{ echo \"gitopsq: cannot unpack the run's working tree ({member})\"; exit 1; }}")
        lines.append(f"rm -f {tarball}")
    return "".join(f"  {line}\n" for line in lines)
