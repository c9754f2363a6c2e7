"""Property: whatever the bytes, parse_run returns a RunSpec or raises SpecError, nothing else."""

from __future__ import annotations

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
