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
