"""Masking secret values in served logs: whole values, longest first, lines of multi-line values,
short values left alone, and the same result when the log is read in chunks that split a value."""

from __future__ import annotations

import io

from hypothesis import given, settings, strategies as st

from gitopsq.masking import StreamMasker, mask, mask_terms, masked_chunks


def test_every_value_becomes_stars():
    text = "token=hf_abcdef and again hf_abcdef, key wandb-123\n"
    assert mask(text, ["hf_abcdef", "wandb-123"]) == "token=*** and again ***, key ***\n"
    assert mask(text, []) == text


def test_longest_value_first_leaves_no_tail():
    # "abcd" alone would leave "efgh" of the longer value visible
    assert mask("x abcdefgh y abcd z", ["abcd", "abcdefgh"]) == "x *** y *** z"


def test_values_shorter_than_four_characters_are_not_masked():
    assert mask("exit 0 ok yes", ["0", "ok", "yes"]) == "exit 0 ok yes"
    assert mask_terms(["abc", "abcd"]) == ["abcd"]


def test_a_multiline_value_is_masked_whole_and_line_by_line():
    key = "-----BEGIN KEY-----\nAAAABBBBCCCC\nDDDD\r\n-----END KEY-----"
    assert mask(f"cat:\n{key}\n", [key]) == "cat:\n***\n"
    assert mask("only the middle: AAAABBBBCCCC and DDDD\n", [key]) == "only the middle: *** and ***\n"


def test_regex_characters_in_values_are_literal():
    assert mask("p4$$.w*rd(1) and p4$$xw*rd(1)", ["p4$$.w*rd(1)"]) == "*** and p4$$xw*rd(1)"


def test_a_value_straddling_two_chunks_is_masked():
    masker = StreamMasker(["supersecret"])
    out = masker.feed("line 1\ntoken: super") + masker.feed("secret\nline 3\n") + masker.finish()
    assert out == "line 1\ntoken: ***\nline 3\n"


def test_a_value_split_over_many_tiny_chunks():
    masker = StreamMasker(["supersecret", "secret-two"])
    text = "a supersecret b secret-two c supersecre"
    out = "".join(masker.feed(ch) for ch in text) + masker.finish()
    assert out == "a *** b *** c supersecre"


def test_feed_returns_text_as_soon_as_it_is_final():
    masker = StreamMasker(["abcdef"])
    assert masker.feed("0123456789") == "0123456789"  # no end of it can start the value
    assert masker.feed("x abc") == "x "  # `abc` may
    assert masker.feed("def!") == "***!"
    assert masker.feed("ab\n") == "ab\n"  # a line is out with its newline: `logs -f` shows it at once
    assert masker.finish() == ""


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=8), max_size=4),
       text=st.text(alphabet="abcd\n", max_size=80), cuts=st.lists(st.integers(0, 80), max_size=10))
def test_streaming_is_exactly_masking_the_whole_text(values, text, cuts):
    masker = StreamMasker(values)
    points = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    out = "".join(masker.feed(text[a:b]) for a, b in zip(points, points[1:])) + masker.finish()
    assert out == mask(text, values)


def test_masked_chunks_reads_bytes_without_splitting_characters():
    value = "clé-secrète-✓"
    data = f"début {value} fin\n".encode() * 3 + b"\xff broken byte\n"
    for size in (1, 2, 3, 7, 64):
        out = "".join(masked_chunks(io.BytesIO(data), [value], chunk_bytes=size))
        assert out == "début *** fin\n" * 3 + "\ufffd broken byte\n"
