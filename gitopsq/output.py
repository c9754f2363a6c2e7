"""Rendering problems for people, scripts and CI annotations."""

from __future__ import annotations

import json

from gitopsq.yamlload import Problem


def _escape_github(text: str, property_value: bool = False) -> str:
    # GitHub workflow commands need %, CR and LF escaped (and , and : inside properties).
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        text = text.replace(",", "%2C").replace(":", "%3A")
    return text


def github_annotation(problem: Problem) -> str:
    props = f"file={_escape_github(problem.file, True)}"
    if problem.line:
        props += f",line={problem.line}"
    props += ",title=gitopsq"
    message = f"{problem.field}: {problem.message}" if problem.field else problem.message
    return f"::error {props}::{_escape_github(message)}"


def problems_json(problems: list[Problem], **extra) -> str:
    return json.dumps({**extra, "errors": [p.as_dict() for p in problems]}, indent=2)
