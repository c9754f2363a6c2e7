"""A stored spec decodes (RunSpec.from_dict) to the spec it was written from, whatever parts of it
are shared with specs decoded before (a controller holds one per queued submission)."""

from __future__ import annotations

import json

import yaml
from hypothesis import given, settings

from gitopsq.spec import RunSpec, SpecError, parse_run
from tests.test_spec_properties import near_valid


def stored(spec: RunSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)  # as the store and the tree write it


@settings(max_examples=300, deadline=None)
@given(near_valid)
def test_a_decoded_spec_equals_the_parsed_one_and_writes_the_same_text(doc):
    try:
        spec = parse_run(yaml.safe_dump(doc).encode(), "runs/prop.yml")
    except SpecError:
        return
    decoded = RunSpec.from_dict(json.loads(stored(spec)))
    again = RunSpec.from_dict(json.loads(stored(spec)))
    assert decoded == spec and again == spec
    assert stored(decoded) == stored(spec) == stored(again)
    assert again.resources is decoded.resources  # one object for equal resources, not one per spec


def test_shared_parts_keep_the_numbers_as_written():
    """1 == 1.0: a part shared by equality would write 1.0 back for a spec that stored 1."""
    base = json.loads(stored(parse_run(b"type: task\nname: a\ncommands: [x]\n", "runs/a.yml")))
    as_float = dict(base, resources={**base["resources"], "cpu": {"min": 4.0, "max": None}},
                    retry={"on_events": ["error"], "duration": 60.0})
    as_int = dict(base, resources={**base["resources"], "cpu": {"min": 4, "max": None}},
                  retry={"on_events": ["error"], "duration": 60})
    first, second = RunSpec.from_dict(as_float), RunSpec.from_dict(as_int)
    assert json.dumps(first.to_dict(), sort_keys=True) == json.dumps(as_float, sort_keys=True)
    assert json.dumps(second.to_dict(), sort_keys=True) == json.dumps(as_int, sort_keys=True)
