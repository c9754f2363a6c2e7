"""Editing a user's YAML file: the keys set change, every other line stays as written."""

from __future__ import annotations

import pytest

from gitopsq.apply import queue_until_it_fits
from gitopsq.yamledit import EditError, edit_mapping, set_key, text_diff


def test_a_line_ruamel_would_refold_next_to_the_change_stays_as_written():
    text = "type: task\ncommands:\n  - python train.py\n    --epochs 3\nretry: true  # yes\npriority: 7   # x\n"
    edited = edit_mapping(text, queue_until_it_fits)
    assert edited == ("type: task\ncommands:\n  - python train.py\n    --epochs 3\n"
                      "retry:       # yes\n  on_events: [no-capacity]\n  duration: off\npriority: 7   # x\n")


def test_an_explicit_document_start_and_trailing_spaces_stay():
    text = "---\ntype: task \ncommands: [a]\nresources: \n  cpu: 2\n"
    edited = edit_mapping(text, queue_until_it_fits)
    assert edited == text + "retry:\n  on_events: [no-capacity]\n  duration: off\n"


def test_a_retry_mapping_is_edited_where_it_is_keeping_its_style_and_comments():
    text = ("type: task\ncommands: [a]\nretry:   # policy\n  on_events:\n    - error\n    - interruption\n"
            "  duration: 2h  # two hours\nname: x\n")
    edited = edit_mapping(text, queue_until_it_fits)
    assert edited.startswith("type: task\ncommands: [a]\nretry:   # policy\n  on_events:\n    - no-capacity\n")
    assert "  duration: off # two hours\nname: x\n" in edited and "error" not in edited


def test_a_flow_retry_stays_a_flow_mapping():
    edited = edit_mapping("type: task\ncommands: [a]\nretry: {duration: 1h}   # keep\n", queue_until_it_fits)
    assert edited == "type: task\ncommands: [a]\nretry: {duration: off, on_events: [no-capacity]} # keep\n"


def test_a_file_without_a_final_newline_gets_one():
    assert edit_mapping("type: task\ncommands: [a]", set_key("name", "x", after="type")) == \
        "type: task\nname: x\ncommands: [a]\n"


def test_a_file_that_is_not_a_mapping_cannot_be_edited():
    with pytest.raises(EditError, match="not a mapping"):
        edit_mapping("- a\n- b\n", queue_until_it_fits)


def test_text_diff_is_a_unified_diff_of_the_text():
    assert text_diff("a: 1\n", "a: 1\nb: 2\n", "runs/x.yml") == "--- a/runs/x.yml\n+++ b/runs/x.yml\n@@ -1 +1,2 @@\n a: 1\n+b: 2\n"
    assert text_diff("", "a: 1", "runs/x.yml").startswith("--- /dev/null\n+++ b/runs/x.yml\n")
