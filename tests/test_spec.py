"""Normalising run files: durations, retry, resources, defaults, and dstack's GPU grammar."""

from __future__ import annotations

import pytest

from gitopsq.spec import Gpu, Range, Retry, RunSpec, SpecError, parse_run


def parse(text: str, **kw) -> RunSpec:
    return parse_run(text.encode(), "runs/x.yml", **kw)


def test_minimal_task_defaults():
    spec = parse("type: task\ncommands: [echo hi]\n")
    assert spec.name == "x"
    assert spec.priority == 0
    assert spec.retry is None
    assert spec.max_duration is None
    assert spec.resources.gpu is None
    assert spec.commands == ("echo hi",)


@pytest.mark.parametrize("text, seconds", [("90", 90), ("30s", 30), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("1w", 604800), ("off", None)])
def test_durations(text, seconds):
    assert parse(f"type: task\ncommands: [x]\nmax_duration: {text}\n").max_duration == seconds


@pytest.mark.parametrize("text, expected", [
    ("true", Retry(("no-capacity", "interruption", "error"), 3600)),
    ("false", None),
    ("{on_events: [no-capacity]}", Retry(("no-capacity",), 3600)),
    ("{duration: off}", Retry(("no-capacity", "interruption", "error"), None)),
    ("{on_events: [error], duration: 2h}", Retry(("error",), 7200)),
])
def test_retry_forms(text, expected):
    assert parse(f"type: task\ncommands: [x]\nretry: {text}\n").retry == expected


@pytest.mark.parametrize("gpu, expected", [
    ("H100:1", Gpu(None, ("H100",), None, None, Range(1, 1))),
    ("A100:80GB:8", Gpu(None, ("A100",), Range(80, 80), None, Range(8, 8))),
    ("24GB", Gpu(None, (), Range(24, 24), None, Range(1, 1))),
    ("40GB..80GB:4", Gpu(None, (), Range(40, 80), None, Range(4, 4))),
    ("nvidia:4..8", Gpu("nvidia", (), None, None, Range(4, 8))),
    ("1..2", Gpu(None, (), None, None, Range(1, 2))),
    ("A10G,A100:2", Gpu(None, ("A10G", "A100"), None, None, Range(2, 2))),
    ("amd:MI300X:8", Gpu("amd", ("MI300X",), None, None, Range(8, 8))),
    ("v5litepod-8", Gpu("google", ("v5litepod-8",), None, None, Range(1, 1))),
    ("24GB:1..2", Gpu(None, (), Range(24, 24), None, Range(1, 2))),
])
def test_gpu_grammar(gpu, expected):
    assert parse(f"type: task\ncommands: [x]\nresources:\n  gpu: {gpu!r}\n").resources.gpu == expected


def test_gpu_mapping_and_sizes():
    spec = parse("type: task\ncommands: [x]\nresources:\n  cpu: 4..\n  memory: 16GB..\n  disk: 512MB..1TB\n  shm_size: 16GB\n  gpu: {name: [H100], memory: 80GB, count: 1..2}\n")
    res = spec.resources
    assert res.cpu == Range(4, None)
    assert res.memory == Range(16, None)
    assert res.disk == Range(0.5, 1024)
    assert res.shm_size == 16
    assert res.gpu == Gpu(None, ("H100",), Range(80, 80), None, Range(1, 2))
    assert res.gpu_count == 1


def test_env_list_and_mapping_normalise_alike():
    a = parse("type: task\ncommands: [x]\nenv: [A=1, B=two=2]\n")
    b = parse("type: task\ncommands: [x]\nenv: {A: 1, B: two=2}\n")
    assert a.env == b.env == (("A", "1"), ("B", "two=2"))


def test_defaults_merge_under_the_file():
    defaults = {"retry": {"on_events": ["no-capacity"], "duration": "off"}, "priority": 5}
    assert parse("type: task\ncommands: [x]\n", defaults=defaults).retry == Retry(("no-capacity",), None)
    own = parse("type: task\ncommands: [x]\npriority: 9\nretry: {duration: 2h}\n", defaults=defaults)
    assert own.priority == 9
    assert own.retry == Retry(("no-capacity",), 7200)


def problems_of(text: str, **kw) -> list[tuple]:
    with pytest.raises(SpecError) as caught:
        parse(text, **kw)
    return sorted((p.file, p.line or 0, p.field, p.message) for p in caught.value.problems)


def test_a_problem_is_the_defaults_file_s_only_when_the_field_comes_from_the_defaults():
    defaults = {"retry": {"on_events": ["bogus"]}, "max_duration": "someday"}
    own = "type: task\ncommands: [x]\nretry:\n  duration: forever\n"
    assert [(f, line, fld) for f, line, fld, _ in problems_of(own, defaults=defaults)] == [
        (".gitopsq.yml", 0, "max_duration"),
        (".gitopsq.yml", 0, "retry.on_events[0]"),  # the file writes retry, but not retry.on_events
        ("runs/x.yml", 4, "retry.duration"),
    ]
    # A field nobody wrote (a required one) is the file's, at its first line, with or without defaults.
    manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"
    assert problems_of(manifest, defaults={"retry": {"duration": "1h"}}) == problems_of(manifest) == [
        ("runs/x.yml", 1, "type", "required field is missing")]
    # A default that the file overrides is not reported at all.
    assert parse("type: task\ncommands: [x]\nmax_duration: 1h\n", defaults={"max_duration": "someday"}).max_duration == 3600


def test_spec_round_trips_through_dict():
    spec = parse("type: dev-environment\nide: vscode\ninit: [echo]\ninactivity_duration: 2h\nretry: true\nresources: {gpu: 'A100:80GB:2', cpu: 4}\n")
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert spec.inactivity_duration == 7200


def test_image_without_commands_is_valid():
    spec = parse("type: service\nimage: nginx\nport: 80\n")
    assert spec.commands == () and spec.image == "nginx"


def test_errors_are_collected_together():
    with pytest.raises(SpecError) as caught:
        parse("type: task\ncommands: [x]\npriority: 200\nmax_duration: forever\nfoo: 1\n")
    fields = [p.field for p in caught.value.problems]
    assert fields == ["priority", "max_duration", "foo"]
    assert [p.line for p in caught.value.problems] == [3, 4, 5]


@pytest.mark.parametrize("text, field", [
    ('type: task\nname: "abc\\n"\ncommands: [x]\n', "name"),
    ('type: task\ncommands: [x]\nenv: {"FOO\\n": "1"}\n', "env"),
    ('type: task\ncommands: [x]\nshell: "sh\\n"\n', "shell"),
    ('type: task\ncommands: [x]\nmax_duration: "1h\\n"\n', "max_duration"),
    ('type: task\ncommands: [x]\nresources: {memory: "16GB\\n"}\n', "resources.memory"),
    ('type: task\ncommands: [x]\npython: "3.12\\n"\n', "python"),
])
def test_a_trailing_newline_is_not_a_full_match(text, field):
    with pytest.raises(SpecError) as caught:
        parse(text)
    assert [p.field for p in caught.value.problems] == [field]


def test_a_file_stem_with_a_newline_is_not_a_run_name():
    with pytest.raises(SpecError) as caught:
        parse_run(b"type: task\ncommands: [x]\n", "runs/stem\n.yml")
    assert caught.value.problems[0].field == "name"


@pytest.mark.parametrize("text, field, line", [
    ('type: task\ncommands: [x]\nenv: {A: "x\\0y"}\n', "env.A", 3),
    ('type: task\ncommands: [x]\nenv: ["A=x\\0y"]\n', "env[0]", 3),
    ('type: task\ncommands:\n  - echo\n  - "a\\0b"\n', "commands[1]", 4),
])
def test_a_nul_byte_in_a_value_is_refused_at_validation(text, field, line):
    # A NUL cannot be passed to a process (argv and environ are C strings): refuse it before it queues.
    with pytest.raises(SpecError) as caught:
        parse(text)
    problem = caught.value.problems[0]
    assert (problem.field, problem.line) == (field, line)
    assert "NUL" in problem.message


def test_nodes_and_schedule():
    spec = parse("type: task\ncommands: [x]\nnodes: 3\nschedule:\n  cron: '0  3 * * *'\n")
    assert (spec.nodes, spec.schedule) == (3, ("0 3 * * *",))
    listed = parse("type: task\ncommands: [x]\nschedule: {cron: ['0 3 * * *', '*/15 8-18 * * mon-fri']}\n")
    assert (listed.nodes, listed.schedule) == (1, ("0 3 * * *", "*/15 8-18 * * mon-fri"))
    assert RunSpec.from_dict(listed.to_dict()) == listed
    # specs stored before these fields existed read as one node, no schedule
    old = {k: v for k, v in spec.to_dict().items() if k not in ("nodes", "schedule")}
    assert (RunSpec.from_dict(old).nodes, RunSpec.from_dict(old).schedule) == (1, ())


@pytest.mark.parametrize("kind", ["service", "dev-environment"])
def test_schedule_applies_to_every_run_type(kind):
    body = {"service": "port: 80\ncommands: [x]\n", "dev-environment": "ide: vscode\n"}[kind]
    assert parse(f"type: {kind}\n{body}schedule: {{cron: '0 8 * * mon-fri'}}\n").schedule == ("0 8 * * mon-fri",)


@pytest.mark.parametrize("cron, field, message", [
    ("'61 * * * *'", "schedule.cron", "'61 * * * *' is not a cron expression: bad minute"),
    ("'* * *'", "schedule.cron", "it has 3 field(s), cron has 5"),
    ("['0 3 * * *', '0 3 * * 9']", "schedule.cron[1]", "bad day-of-week"),
    ("[]", "schedule.cron", "must list at least one cron expression"),
    ("5", "schedule.cron", "5 is not a cron expression or a list of them"),
])
def test_invalid_cron_names_the_field(cron, field, message):
    with pytest.raises(SpecError) as caught:
        parse(f"type: task\ncommands: [x]\nschedule:\n  cron: {cron}\n")
    [problem] = caught.value.problems
    assert (problem.line, problem.field) == (4, field) and message in problem.message, problem
