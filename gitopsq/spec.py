"""Load, validate and normalise one run file into an immutable RunSpec.

`schemas/run.schema.json` is the single source of the format; this module validates against
it with one reused validator and turns its errors into `file:line: field: message` problems
that say what would be accepted. Normalising parses durations, sizes and GPU specs into
numbers so that the planner and providers never look at strings again.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Mapping

from gitopsq.inputs import (FileSpec, InputError, RegistryAuth, RepoSpec, VolumeSpec, env_pairs, parse_files, parse_registry_auth,
                            parse_repos, parse_volumes, secret_names)
from gitopsq.queue import cron_problem
from gitopsq.resources import schema_path
from gitopsq.yamlload import Loaded, Problem, SpecError, field_name, load_yaml

RETRY_EVENTS = ("no-capacity", "interruption", "error")
DEFAULT_RETRY_DURATION = 3600
RUN_TYPES = ("task", "service", "dev-environment")
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,40}")  # used with fullmatch: "$" would accept a trailing newline

__all__ = ["Problem", "SpecError", "RunSpec", "Retry", "Resources", "Gpu", "Range", "parse_run", "load_schema"]


# --- the schema and its one validator -------------------------------------------------------


@functools.cache
def load_schema() -> dict:
    return json.loads(schema_path().read_text("utf-8"))


def _runtime_schema() -> dict:
    # Unknown top-level fields are found by schema_problems itself, with a suggestion; without
    # `unevaluatedProperties` jsonschema validates a file about a third faster. Editors, which
    # read the file, still get it. A test keeps the two verdicts the same.
    return {k: v for k, v in load_schema().items() if k != "unevaluatedProperties"}


@functools.cache
def _validator():
    # Imported here: jsonschema costs ~100 ms to import and `gitopsq --help` should not pay it.
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(load_schema())
    return jsonschema.Draft202012Validator(_runtime_schema())


# Keywords whose value is one schema, a mapping of schemas or a list of schemas: what
# _as_draft07 walks into. Any other keyword must be one fastjsonschema's draft-07 knows.
_ONE_SCHEMA = {"not", "if", "then", "else", "items", "additionalProperties", "propertyNames", "contains"}
_SCHEMA_MAP = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
_SCHEMA_LIST = {"allOf", "anyOf", "oneOf"}
_DRAFT07_VALUES = {"$schema", "$id", "$ref", "$comment", "title", "description", "type", "enum", "const", "pattern",
                   "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                   "multipleOf", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
                   "required", "default", "examples"}


def _as_draft07(schema: Any) -> Any:
    """The runtime schema in draft-07 words, for fastjsonschema: `dependentSchemas` (2019-09+)
    becomes `dependencies`, which meant the same for schemas. ValueError on a keyword draft-07
    does not have (fastjsonschema would skip it silently and accept what the schema refuses)."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _ONE_SCHEMA:
            out[key] = _as_draft07(value)
        elif key in _SCHEMA_MAP:
            out["dependencies" if key == "dependentSchemas" else key] = {k: _as_draft07(v) for k, v in value.items()}
        elif key in _SCHEMA_LIST:
            out[key] = [_as_draft07(v) for v in value]
        elif key in _DRAFT07_VALUES or key.startswith("x-"):
            out[key] = value
        else:
            raise ValueError(f"schema keyword {key!r} has no draft-07 equivalent")
    if "$schema" in out:
        out["$schema"] = "http://json-schema.org/draft-07/schema#"
    return out


@functools.cache
def _fast_check():
    """A compiled yes/no check of the runtime schema, about 15x faster than jsonschema: a valid
    file (nearly all of them) is told by it alone; a file it refuses goes through _validator,
    which is the judge and says why. A test keeps the two verdicts the same."""
    import fastjsonschema

    check = fastjsonschema.compile(_as_draft07(_runtime_schema()), use_default=False, use_formats=False)

    def is_valid(data: Any) -> bool:
        try:
            check(data)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    return is_valid


@functools.cache
def allowed_fields(run_type: str) -> frozenset[str]:
    """Top-level fields the schema knows for a run type (supported, unsupported or forbidden)."""
    schema = load_schema()
    names = set(schema["properties"])
    for branch in schema["allOf"]:
        if branch["if"]["properties"]["type"]["const"] == run_type:
            names |= set(branch["then"]["properties"])
    return frozenset(names)


@functools.cache
def _supported_fields(run_type: str) -> frozenset[str]:
    """allowed_fields less those marked unsupported: what an unknown field's suggestion picks from."""
    return frozenset(k for k in allowed_fields(run_type) if "x-unsupported" not in load_schema()["properties"].get(k, {}))


# --- turning schema errors into problems -----------------------------------------------------

_JSON_TYPE = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number", type(None): "null"}
_EXPECTED = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false"}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _message(error, fallback: str | None = None) -> str:
    """A sentence for one jsonschema error, preferring the schema's own x-message."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance
    if error.validator == "not" and "x-unsupported" in schema:
        why = schema["x-unsupported"]
        return "not supported by gitopsq yet" + (f" ({why})" if why else "")
    custom = schema.get(f"x-message-{error.validator}") or schema.get("x-message")
    if custom:
        return custom.replace("{value}", _show(value))
    if error.validator in ("pattern", "enum", "const", "minimum", "maximum") and fallback:
        return fallback.replace("{value}", _show(value))
    if error.validator == "type":
        expected = error.validator_value
        expected = [expected] if isinstance(expected, str) else expected
        got = "nothing (is what belongs under it indented?)" if value is None else f"{_type_name(value)} {_show(value)}"
        return f"expected {' or '.join(_EXPECTED.get(t, t) for t in expected)}, got {got}"
    if error.validator == "enum":
        return f"{_show(value)} is not one of: {', '.join(str(v) for v in error.validator_value)}"
    if error.validator == "minItems":
        return "must not be empty"
    if error.validator == "uniqueItems":
        return "lists an item twice"
    if error.validator in ("minimum", "exclusiveMinimum"):
        return f"{_show(value)} is too small (minimum {error.validator_value})"
    if error.validator == "maximum":
        return f"{_show(value)} is too large (maximum {error.validator_value})"
    if error.validator == "minLength":
        return "must not be empty"
    if error.validator == "minProperties":
        return "must not be an empty mapping"
    if error.validator == "propertyNames":
        return f"{_show(value)} is not a valid name"
    return error.message


def _explain(error, fallback: str | None = None) -> list[tuple[tuple, str]]:
    """(path, message) pairs for one error, descending into anyOf when one branch is meant."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator in ("anyOf", "oneOf") and error.context:
        own = schema.get("x-message") or fallback
        # The branches whose type matches the value are the ones the author meant; when there is
        # exactly one, its specific errors beat a generic "not valid under any of the schemas".
        by_branch: dict[int, list] = {}
        for sub in error.context:
            by_branch.setdefault(sub.schema_path[0], []).append(sub)
        meant = [errs for errs in by_branch.values() if not any(e.validator == "type" and not e.relative_path for e in errs)]
        if len(meant) == 1:
            out = []
            for sub in meant[0]:
                out.extend(_explain(sub, own))
            return out
        if own:
            return [(tuple(error.absolute_path), own.replace("{value}", _show(error.instance)))]
    if error.validator == "required":
        missing = [name for name in error.validator_value if isinstance(error.instance, dict) and name not in error.instance]
        message = schema.get("x-message-required", "required field is missing")
        return [(tuple(error.absolute_path) + (name,), message) for name in missing]
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        known = set(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known] if isinstance(error.instance, dict) else []
        return [(tuple(error.absolute_path) + (k,), _unknown(k, known)) for k in extra]
    return [(tuple(error.absolute_path), _message(error, fallback))]


def _unknown(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(str(name), sorted(known), n=1)
    return "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")


def schema_problems(data: Any, loaded: Loaded, file: str, defaults: Mapping | None = None,
                    defaults_file: str = ".gitopsq.yml") -> list[Problem]:
    """Every problem of one document, ordered by line.

    data is the document merged over `defaults`: a problem whose value the file did not write but
    the defaults did is the defaults file's; any other (a field nobody wrote included) is the file's.
    """
    if not isinstance(data, dict):
        return [Problem(file, loaded.line_of(()), "", f"a run file is a mapping of fields, got {_type_name(data)}")]
    found: list[tuple[tuple, str]] = []
    type_ok = data.get("type") in RUN_TYPES
    if not _fast_check()(data):
        for error in _validator().iter_errors(data):
            found.extend(_explain(error))
    if type_ok:
        allowed = allowed_fields(data["type"])
        found.extend(((k,), _unknown(k, _supported_fields(data["type"]))) for k in data if k not in allowed)
    problems = {
        (0, field_name(path), message, defaults_file) if defaults and _from_defaults(path, loaded.data, defaults)
        else (loaded.line_of(path) or 0, field_name(path), message, file)
        for path, message in found
    }
    return [Problem(owner, line or None, fld, msg) for line, fld, msg, owner in sorted(problems)]


def _from_defaults(path: tuple, own: Any, defaults: Any) -> bool:
    """True when the value at `path` comes from the defaults, not from the file (see merge_defaults)."""
    for key in path:
        if not isinstance(own, dict):
            return False  # a list or scalar of the file replaced whatever the defaults said
        if key not in own:
            return isinstance(defaults, dict) and key in defaults
        own, defaults = own[key], defaults.get(key) if isinstance(defaults, dict) else None
    return False


# --- the normalised spec ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Range:
    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True, slots=True)
class Gpu:
    vendor: str | None = None
    names: tuple[str, ...] = ()
    memory: Range | None = None  # GB per GPU
    total_memory: Range | None = None  # GB over all GPUs
    count: Range = Range(1, 1)


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: Range | None = None
    memory: Range | None = None  # GB
    gpu: Gpu | None = None
    disk: Range | None = None  # GB
    shm_size: float | None = None  # GB

    @property
    def gpu_count(self) -> int:
        """GPUs the run needs at least (0 when it asks for none)."""
        if self.gpu is None:
            return 0
        return int(self.gpu.count.min or 0)


@dataclass(frozen=True, slots=True)
class Retry:
    on_events: tuple[str, ...] = RETRY_EVENTS
    duration: int | None = DEFAULT_RETRY_DURATION  # seconds; None retries forever

    def covers(self, event: str) -> bool:
        return event in self.on_events


@dataclass(frozen=True, slots=True)
class PortMap:
    """A port the run listens on (container_port) and, as dstack has it, where a forward puts it
    on the user's machine (local_port: the same port unless written `9000:80`; None for `*:80`)."""

    container_port: int
    local_port: int | None = None


# A controller holds the spec of every queued submission (10,000 and more): equal resources and
# retry policies are one object, and the words every spec repeats one string, not one per spec.
_SHARED_MAX = 1024  # distinct values kept; past that, new ones are simply not shared
_shared_values: dict = {}


def _shared(value):
    """The same value decoded before (frozen, so sharing it is safe), else this one. Keyed by repr,
    not equality: 1 == 1.0 == True, and a shared 1.0 would change the JSON the spec writes back."""
    key = repr(value)
    found = _shared_values.get(key)
    if found is not None:
        return found
    if len(_shared_values) < _SHARED_MAX:
        _shared_values[key] = value
    return value


def _word(text):
    """A short string many specs repeat (a type, a shell, an event, an env name), interned."""
    return sys.intern(text) if isinstance(text, str) and len(text) <= 64 else text


@dataclass(frozen=True, slots=True)
class RunSpec:
    name: str
    type: str
    commands: tuple[str, ...] = ()
    init: tuple[str, ...] = ()
    ide: str | None = None
    port: int | None = None
    ports: tuple[PortMap, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    image: str | None = None
    python: str | None = None
    nvcc: bool = False
    shell: str = "bash"
    resources: Resources = field(default_factory=Resources)
    priority: int = 0
    retry: Retry | None = None
    max_duration: int | None = None
    inactivity_duration: int | None = None
    backends: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    spot_policy: str | None = None
    max_price: float | None = None
    repos: tuple[RepoSpec, ...] = ()
    files: tuple[FileSpec, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    registry_auth: RegistryAuth | None = None
    nodes: int = 1  # a cluster run: this many nodes, admitted all together or not at all
    schedule: tuple[str, ...] = ()  # cron expressions (UTC): a submission per tick; () = when committed

    def to_dict(self) -> dict:
        """A JSON-ready form, stable across runs: what is stored and diffed (dataclasses.asdict's)."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "RunSpec":
        def rng(value):
            return Range(**value) if value is not None else None

        res = dict(data.get("resources") or {})
        gpu = res.get("gpu")
        if gpu is not None:
            gpu = Gpu(vendor=gpu["vendor"], names=tuple(gpu["names"]), memory=rng(gpu["memory"]),
                      total_memory=rng(gpu["total_memory"]), count=Range(**gpu["count"]))
        resources = _shared(Resources(cpu=rng(res.get("cpu")), memory=rng(res.get("memory")), gpu=gpu,
                                      disk=rng(res.get("disk")), shm_size=res.get("shm_size")))
        retry = data.get("retry")
        if retry is not None:
            retry = _shared(Retry(on_events=tuple(map(_word, retry["on_events"])), duration=retry["duration"]))
        values = dict(data)
        values.update(resources=resources, retry=retry, env=tuple((_word(k), v) for k, v in data.get("env", ())))
        values.update((key, _word(data[key])) for key in ("type", "shell") if isinstance(data.get(key), str))
        for key in ("commands", "init", "backends", "regions", "schedule"):
            values[key] = tuple(data.get(key, ()))
        # Specs stored before these fields existed have none of them.
        values["repos"] = tuple(RepoSpec(**r) for r in data.get("repos", ()))
        values["files"] = tuple(FileSpec(**f) for f in data.get("files", ()))
        values["volumes"] = tuple(VolumeSpec(**v) for v in data.get("volumes", ()))
        values["registry_auth"] = RegistryAuth(**data["registry_auth"]) if data.get("registry_auth") else None
        values["ports"] = tuple(PortMap(**p) for p in data.get("ports", ()))
        return cls(**values)

    @property
    def listens_on(self) -> tuple[int, ...]:
        """The ports the run listens on: a service's port, a task's or dev environment's ports."""
        return (self.port,) if self.port is not None else tuple(p.container_port for p in self.ports)

    def env_dict(self) -> dict[str, str]:
        """The env as written: secret references (${{ secrets.x }}) not yet resolved."""
        return dict(self.env)

    @property
    def secrets(self) -> frozenset[str]:
        """The names of the secrets the run needs at launch."""
        names = set()
        for _, value in self.env:
            names |= secret_names(value)
        if self.registry_auth:
            names |= secret_names(self.registry_auth.username) | secret_names(self.registry_auth.password)
        return frozenset(names)


_SCALARS = frozenset({str, int, float, bool, type(None)})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    """What dataclasses.asdict makes of a spec value, at a fifth of its cost (which is deep copies
    of immutable scalars and a fields() lookup per object): a first sync converts 10,000 specs."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    names = _FIELD_NAMES.get(kind)
    if names is None and is_dataclass(kind):
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(kind))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if kind is tuple or kind is list:
        return kind(_plain(item) for item in value)
    if kind is dict:
        return {_plain(k): _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


# --- parsing helpers (inputs already passed the schema) --------------------------------------

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {"MB": 1 / 1024, "GB": 1.0, "TB": 1024.0}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([MGT]B)?\s*$")
_GPU_VENDORS = {"nvidia", "amd", "google", "tpu", "intel"}


def parse_duration(value: Any) -> int | None:
    """Seconds, or None for off."""
    if value is False or value == "off":
        return None
    if isinstance(value, int):
        return value
    return int(value[:-1]) * _DURATION_UNITS[value[-1]]


def parse_size(value: Any) -> float:
    """A size in GB; bare numbers are GB as in dstack."""
    if isinstance(value, (int, float)):
        return float(value)
    number, unit = _SIZE_RE.match(value).groups()
    return float(number) * _SIZE_UNITS[unit or "GB"]


def parse_range(value: Any, parse=parse_size) -> Range:
    if isinstance(value, dict):
        return Range(parse(value["min"]) if "min" in value else None, parse(value["max"]) if "max" in value else None)
    if isinstance(value, str) and ".." in value:
        low, high = (part.strip() for part in value.split("..", 1))
        return Range(parse(low) if low else None, parse(high) if high else None)
    single = parse(value)
    return Range(single, single)


def parse_count(value: Any) -> float:
    return float(int(str(value).strip()))


def parse_gpu(value: Any) -> Gpu:
    """dstack's GPU grammar: [vendor:][names:][memory range:][count range], or a mapping."""
    if isinstance(value, int):
        return Gpu(count=Range(value, value))
    if isinstance(value, dict):
        names = value.get("name", ())
        names = (names,) if isinstance(names, str) else tuple(names)
        count = parse_range(value["count"], parse_count) if "count" in value else Range(1, 1)
        memory = parse_range(value["memory"]) if "memory" in value else None
        total = parse_range(value["total_memory"]) if "total_memory" in value else None
        return Gpu(value.get("vendor"), names, memory, total, count)
    vendor, names, memory, count = None, (), None, Range(1, 1)
    for token in value.strip().split(":"):
        if re.fullmatch(r"[0-9]+|[0-9]+\.\.[0-9]*|\.\.[0-9]+", token):
            count = parse_range(token, parse_count)
        elif re.search(r"[0-9][MGT]B", token):
            memory = parse_range(token)
        elif token.lower() in _GPU_VENDORS:
            vendor = token.lower()
        else:
            names = tuple(token.split(","))
    if vendor is None and names and all(re.match(r"v[0-9]", n) for n in names):
        vendor = "google"  # TPU names such as v5litepod-8
    return Gpu(vendor, names, memory, None, count)


def _retry(value: Any) -> Retry | None:
    if value is None or value is False:
        return None
    if value is True:
        return Retry()
    duration = parse_duration(value["duration"]) if "duration" in value else DEFAULT_RETRY_DURATION
    return Retry(tuple(value.get("on_events", RETRY_EVENTS)), duration)


def _resources(value: Mapping | None) -> Resources:
    value = value or {}
    disk = value.get("disk")
    if isinstance(disk, dict) and "size" in disk:
        disk = disk["size"]
    return Resources(
        cpu=parse_range(value["cpu"], parse_count) if "cpu" in value else None,
        memory=parse_range(value["memory"]) if "memory" in value else None,
        gpu=parse_gpu(value["gpu"]) if "gpu" in value else None,
        disk=parse_range(disk) if disk is not None else None,
        shm_size=parse_size(value["shm_size"]) if "shm_size" in value else None,
    )


def _range_problems(res: Resources) -> list[tuple[tuple, str]]:
    """Ranges the schema cannot see are backwards (min above max)."""
    out = []
    checks = {("resources", "cpu"): res.cpu, ("resources", "memory"): res.memory, ("resources", "disk"): res.disk}
    if res.gpu:
        checks[("resources", "gpu")] = res.gpu.count
        checks[("resources", "gpu", "memory")] = res.gpu.memory
    for path, rng in checks.items():
        if rng and rng.min is not None and rng.max is not None and rng.min > rng.max:
            out.append((path, f"range {rng.min:g}..{rng.max:g} is empty (the minimum is above the maximum)"))
    return out


def _ports(items: list) -> tuple[tuple[PortMap, ...], list[tuple[tuple, str]]]:
    """The schema has checked the forms (8080, '8080', '9000:80', '*:80', a mapping); not the
    numbers inside a string, nor that a port is listed once."""
    ports, problems, seen = [], [], set()
    for index, item in enumerate(items):
        if isinstance(item, dict):
            port = PortMap(item["container_port"], item.get("local_port"))
        elif isinstance(item, int):
            port = PortMap(item, item)
        else:
            local, _, container = item.rpartition(":")
            port = PortMap(int(container), int(container) if not local else None if local == "*" else int(local))
        bad = next((n for n in (port.container_port, port.local_port) if n is not None and not 1 <= n <= 65535), None)
        if bad is not None:
            problems.append((("ports", index), f"{bad} is not a port (use a number from 1 to 65535)"))
        elif port.container_port in seen:
            problems.append((("ports", index), f"port {port.container_port} is listed twice"))
        seen.add(port.container_port)
        ports.append(port)
    return tuple(ports), problems


def _schedule(value: Mapping | None) -> tuple[tuple[str, ...], list[tuple[tuple, str]]]:
    """The cron expressions of `schedule` (one or a list), and those the schema cannot judge."""
    if value is None:
        return (), []
    cron = value["cron"]
    if isinstance(cron, str):
        found = [(("schedule", "cron"), cron_problem(cron))]
        crons = (cron,)
    else:
        found = [(("schedule", "cron", i), cron_problem(expr)) for i, expr in enumerate(cron)]
        crons = tuple(cron)
    return tuple(" ".join(c.split()) for c in crons), [(path, why) for path, why in found if why]


# --- the entry point -------------------------------------------------------------------------


def merge_defaults(defaults: Mapping, data: Mapping) -> dict:
    """The file's own fields win; mappings merge key by key; lists and scalars replace."""
    merged = dict(defaults)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_defaults(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_run(raw: bytes, file: str, defaults: Mapping | None = None, defaults_file: str = ".gitopsq.yml",
              repo_path: str | None = None) -> RunSpec:
    """Parse one run file into a RunSpec, or raise SpecError with every problem found.

    file names the file in problems; repo_path is its path inside the config repo (default: file),
    from which `repos` and `files` are resolved. Never raises anything else, whatever the bytes:
    that is a tested property.
    """
    try:
        return _parse_run(raw, file, defaults or {}, defaults_file, file if repo_path is None else repo_path)
    except SpecError:
        raise
    except Exception as exc:  # a bug of ours must still reach the user as a message on the file
        raise SpecError([Problem(file, None, "", f"internal error while reading this file: {type(exc).__name__}: {exc}")]) from exc


def _parse_run(raw: bytes, file: str, defaults: Mapping, defaults_file: str, repo_path: str) -> RunSpec:
    loaded = load_yaml(raw, file)
    data = loaded.data
    if isinstance(data, dict) and defaults:
        data = merge_defaults(defaults, data)
    problems = schema_problems(data, loaded, file, defaults, defaults_file)
    if problems:
        raise SpecError(problems)

    name = data.get("name")
    if name is None:
        stem = default_name(repo_path)
        if not NAME_RE.fullmatch(stem):
            raise SpecError([Problem(file, 1, "name", f"no name given and the file name {stem!r} is not a run name; add name: (lower-case letters, digits and '-')")])
        name = stem
    resources = _resources(data.get("resources"))
    range_errors = _range_problems(resources)
    ports, port_errors = _ports(data.get("ports", ()))
    range_errors += port_errors
    if range_errors:
        raise SpecError([Problem(file, loaded.line_of(path), field_name(path), msg) for path, msg in range_errors])
    schedule, cron_errors = _schedule(data.get("schedule"))
    if cron_errors:
        raise SpecError([Problem(file, loaded.line_of(path), field_name(path), msg) for path, msg in cron_errors])
    try:
        env = env_pairs(data.get("env"))
        inputs = dict(
            repos=parse_repos(data.get("repos", ()), repo_path),
            files=parse_files(data.get("files", ()), repo_path),
            volumes=parse_volumes(data.get("volumes", ())),
            registry_auth=parse_registry_auth(data.get("registry_auth"), frozenset(k for k, _ in env)),
        )
    except InputError as exc:
        raise SpecError([Problem(file, loaded.line_of(exc.path), field_name(exc.path), str(exc))]) from None
    python = data.get("python")
    return RunSpec(
        name=name,
        type=data["type"],
        commands=tuple(data.get("commands", ())),
        init=tuple(data.get("init", ())),
        ide=data.get("ide"),
        port=data.get("port"),
        ports=ports,
        env=env,
        image=data.get("image"),
        python=str(python) if python is not None else None,
        nvcc=bool(data.get("nvcc", False)),
        shell=data.get("shell", "bash"),
        resources=resources,
        priority=data.get("priority", 0),
        retry=_retry(data.get("retry")),
        max_duration=parse_duration(data["max_duration"]) if "max_duration" in data else None,
        inactivity_duration=parse_duration(data["inactivity_duration"]) if "inactivity_duration" in data else None,
        backends=tuple(data.get("backends", ())),
        regions=tuple(data.get("regions", ())),
        spot_policy=data.get("spot_policy"),
        max_price=data.get("max_price"),
        nodes=data.get("nodes", 1),
        schedule=schedule,
        **inputs,
    )


def default_name(path: str) -> str:
    """A run's name when the file gives none: the file's stem; dstack's train.dstack.yml is train,
    and a file called .dstack.yml takes its folder's name."""
    folder, _, base = path.rpartition("/")
    for suffix in (".dstack.yml", ".dstack.yaml"):
        if base == suffix:
            return folder.rpartition("/")[2]
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base.rsplit(".", 1)[0]
