"""Property: whatever the bytes, parse_run returns a RunSpec or raises SpecError, nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import yaml

from gitopsq.spec import RunSpec, SpecError, parse_run

FIELDS = ["type", "name", "commands", "init", "ide", "port", "env", "resources", "priority", "retry",
          "max_duration", "inactivity_duration", "image", "python", "shell", "backends", "spot_policy",
          "max_price", "repos", "on_events", "duration", "gpu", "cpu", "memory", "count", "min", "max"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=20),
    st.sampled_from(["task", "service", "dev-environment", "off", "1h", "30m", "H100:1", "16GB..", "4..8",
                     "no-capacity", "error", "A=1", "vscode", "..", ":", "1..0", "80GB:..", "nvidia:"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.sampled_from(FIELDS), children, max_size=5)),
    max_leaves=20,
)
documents = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8)
# Mostly valid files with a few fields varied: they probe the boundary between valid and not.
field_values = {
    "priority": st.one_of(st.integers(-5, 105), st.sampled_from(["high", None])),
    "retry": st.one_of(st.booleans(), st.fixed_dictionaries({}, optional={
        "on_events": st.lists(st.sampled_from(["no-capacity", "error", "interruption", "oom"]), max_size=3),
        "duration": st.sampled_from(["1h", "off", False, 30, "forever", -1])})),
    "max_duration": st.sampled_from(["2h", "off", 0, "1 hour", 60, False]),
    "inactivity_duration": st.sampled_from(["2h", "off", 10]),
    "resources": st.fixed_dictionaries({}, optional={
        "gpu": st.sampled_from(["H100:1", "A100:80GB:8", "24GB", "nvidia:4..8", "1..2", 2, "bad gpu", "8..4"]),
        "memory": st.sampled_from(["16GB..", "..64GB", "16GB..64GB", 8, "lots"]),
        "cpu": st.sampled_from([4, "4..", "..8", "8..4", "x"])}),
    "env": st.sampled_from([{"A": "1"}, ["A=1"], ["A"], {"1A": "x"}]),
    "port": st.sampled_from([80, 0, 70000]),
    "ide": st.sampled_from(["vscode", "emacs"]),
    "init": st.sampled_from([["echo"], []]),
    "repos": st.just(["."]),
    "spot_policy": st.sampled_from(["auto", "cheap"]),
}
near_valid = st.builds(
    lambda kind, extra: {"type": kind, "name": "probe", **({"commands": ["echo"]} if kind != "dev-environment" else {}),
                         **({"port": 8000} if kind == "service" else {}), **extra},
    st.sampled_from(["task", "service", "dev-environment"]),
    st.fixed_dictionaries({}, optional=field_values),
)


def outcome(raw: bytes):
    try:
        return parse_run(raw, "runs/prop.yml")
    except SpecError as exc:
        assert exc.problems and all(p.file for p in exc.problems)
        assert not any("internal error" in p.message for p in exc.problems), exc.problems
        return exc


@settings(max_examples=400, deadline=None)
@given(documents)
def test_structured_documents(doc):
    result = outcome(yaml.safe_dump(doc).encode())
    assert isinstance(result, (RunSpec, SpecError))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw):
    assert isinstance(outcome(raw), (RunSpec, SpecError))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdeklmnoprstuy:-[]{}&*!|>'\"#%@`,?\n .0123456789", max_size=120))
def test_yamlish_text(text):
    assert isinstance(outcome(text.encode()), (RunSpec, SpecError))


@settings(max_examples=500, deadline=None)
@given(st.one_of(documents, near_valid))
def test_code_and_the_published_schema_agree(doc):
    """What the schema file (as editors read it) rejects, the code rejects; what the code accepts,
    the schema accepts. The code checks a little more (empty ranges, a name from the file name)."""
    import jsonschema

    from gitopsq.spec import load_schema

    result = outcome(yaml.safe_dump(doc).encode())
    schema_ok = jsonschema.Draft202012Validator(load_schema()).is_valid(yaml.safe_load(yaml.safe_dump(doc)))
    if isinstance(result, RunSpec):
        assert schema_ok, doc
    if not schema_ok:
        assert isinstance(result, SpecError), doc


def test_unknown_fields_are_rejected_by_both():
    import jsonschema

    from gitopsq.spec import load_schema

    plain = jsonschema.Draft202012Validator(load_schema())
    for text in ("type: task\ncommands: [x]\ncomand: [y]\n", "type: service\ncommands: [x]\nport: 80\nide: vscode\n",
                 "type: dev-environment\nport: 80\n", "type: dev-environment\nmystery: 1\n"):
        assert not plain.is_valid(yaml.safe_load(text)), text
        assert isinstance(outcome(text.encode()), SpecError), text


# The compiled yes/no check (spec._fast_check) and jsonschema (spec._validator, the judge of a file
# the check refuses) must give one verdict: a file the check passes is never shown to jsonschema.
pairs = st.fixed_dictionaries({}, optional={  # mostly valid values: an invalid one would hide the others
    "image": st.sampled_from(["python:3.12", "python:3.12", ""]), "python": st.sampled_from(["3.11", "3.11", "2.7"]),
    "nvcc": st.booleans(), "shell": st.sampled_from(["sh", "/bin/zsh", "/bin\x1czsh"]),
    "nodes": st.sampled_from([1, 2, 0, 1.0, True]),
    "ports": st.sampled_from([[8080], ["9000:80"], ["*:80"], ["80\n"], [{"container_port": 80}]]),
    "schedule": st.sampled_from([{"cron": "0 * * * *"}, {"cron": []}]),
})
compiled_cases = st.one_of(documents, near_valid, st.builds(lambda doc, extra: {**doc, **extra}, near_valid, pairs))


@settings(max_examples=600, deadline=None)
@given(compiled_cases)
def test_the_compiled_check_and_jsonschema_agree(doc):
    from gitopsq.spec import _fast_check, _validator

    data = yaml.safe_load(yaml.safe_dump(doc))
    assert _fast_check()(data) == _validator().is_valid(data), data


def test_the_compiled_check_refuses_what_only_newer_drafts_say():
    """fastjsonschema knows draft-07: `dependentSchemas` (image excludes python and nvcc) is
    given to it as `dependencies`, and Python's regular expressions judge patterns for both."""
    from gitopsq.spec import _fast_check, _validator

    for doc in ({"type": "task", "commands": ["x"], "image": "a", "python": "3.11"},
                {"type": "task", "commands": ["x"], "image": "a", "nvcc": True},
                {"type": "task", "commands": ["x"], "shell": "/bin\x1czsh"},
                {"type": "task", "commands": ["x"], "docker": True}):
        assert not _validator().is_valid(doc), doc
        assert not _fast_check()(doc), doc
    assert _fast_check()({"type": "task", "commands": ["x"], "image": "a"})


def test_a_keyword_draft_07_lacks_is_refused_not_skipped():
    from gitopsq.spec import _as_draft07, load_schema

    with pytest.raises(ValueError, match="unevaluatedProperties"):
        _as_draft07(load_schema())  # the published file has it; the runtime copy does not


@settings(max_examples=300, deadline=None)
@given(compiled_cases)
def test_a_spec_as_a_dict_is_what_dataclasses_asdict_makes(doc):
    """RunSpec.to_dict is what is stored and diffed: its hand-written walk must give asdict's
    value and types (tuples stay tuples until JSON), for every spec a file can make."""
    import dataclasses
    import json

    result = outcome(yaml.safe_dump(doc).encode())
    if isinstance(result, RunSpec):
        plain = result.to_dict()
        assert plain == dataclasses.asdict(result)
        assert json.dumps(plain, sort_keys=True) == json.dumps(dataclasses.asdict(result), sort_keys=True)
        assert repr(plain) == repr(dataclasses.asdict(result))  # same types, same key order


def _same_data_as_pyyaml(raw: bytes) -> None:
    from gitopsq.yamlload import load_yaml

    try:
        expected = repr(yaml.load(raw, Loader=yaml.CSafeLoader))
    except Exception as exc:  # what PyYAML refuses, load_yaml refuses alike (parse_run reports either)
        with pytest.raises((SpecError, type(exc))):
            load_yaml(raw, "runs/prop.yml", allow_empty=True)
        return
    try:
        loaded = load_yaml(raw, "runs/prop.yml", allow_empty=True)
    except SpecError:
        return
    assert repr(loaded.data) == expected, raw


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(alphabet="abcdeklmnoprstuy:-[]{}&*!|>'\"#%@`,?\n .0123456789<", max_size=120),
                 documents.map(yaml.safe_dump)))
def test_the_data_read_is_what_pyyaml_constructs(text):
    """load_yaml builds plain documents itself while it walks them for lines; what it builds is
    what PyYAML's own constructor makes of the same text."""
    _same_data_as_pyyaml(text.encode())


def test_anchors_merge_keys_and_tags_read_as_pyyaml_reads_them():
    for text in ("a: &x [1, 2]\nb: *x\n", "base: &b {x: 1}\nrun:\n  <<: *b\n  y: 2\n", "t: 2024-01-01\n",
                 "s: !!str 12\n", "b: !!binary aGk=\n", "o: !!omap [{a: 1}]\n", "f: .inf\nn: ~\ni: 0x1F\nbool: yes\n",
                 "set: !!set {a, b}\n", "x: &s hi\ny: *s\n", "e: !!int nope\n", "u: !custom 1\n"):
        _same_data_as_pyyaml(text.encode())
