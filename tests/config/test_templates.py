"""Template parsing: placeholders, filters, `default('text')`, and a message for each mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reverse_etl.config.templates import Placeholder, TemplateError, parse_template


def test_a_template_splits_into_text_and_placeholders() -> None:
    assert parse_template("Hi {{ first_name }} {{last_name|trim|upper}}!") == [
        "Hi ",
        Placeholder("first_name"),
        " ",
        Placeholder("last_name", ("trim", "upper")),
        "!",
    ]


@pytest.mark.parametrize(
    ("template", "default"),
    [
        ("{{ email | default('') }}", ""),
        ('{{ email | default("") }}', ""),
        ("{{ email|default( 'n/a' ) }}", "n/a"),
        ("{{ email | default('a | b }} {{ c') }}", "a | b }} {{ c"),
        (r"{{ email | default('it\'s') }}", "it's"),
        (r'{{ email | default("say \"hi\"") }}', 'say "hi"'),
        (r"{{ email | default('back\\slash') }}", "back\\slash"),
    ],
)
def test_default_takes_one_quoted_string(template: str, default: str) -> None:
    assert parse_template(template) == [Placeholder("email", (), default)]


def test_default_comes_before_the_other_filters() -> None:
    assert parse_template("{{ email | default('X') | lower }}") == [
        Placeholder("email", ("lower",), "X")
    ]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ email | default }}", r"'default': write default\('text'\)"),
        ("{{ email | default() }}", "one quoted string"),
        ("{{ email | default(none) }}", "one quoted string"),
        ("{{ email | default(42) }}", "one quoted string"),
        ("{{ email | default('a', 'b') }}", "one quoted string"),
        ("{{ email | default('a' }}", "one quoted string"),
        ("{{ email | default('a) }}", "unterminated string"),
        ("{{ email | lower | default('') }}", r"default\(...\) must come first"),
        ("{{ email | lower('x') }}", "'lower' takes no argument"),
        ("{{ email | title }}", r"unknown template filter 'title' \(known: default\('text'\)"),
        ("{{ first_name + last_name }}", "not a column reference"),
        ("{{ }}", "not a column reference"),
        ("{{ name }} }}", "unbalanced"),
        ("{{ name ", "unbalanced"),
        ("{{ a {{ b }}", "unbalanced"),
    ],
)
def test_a_malformed_template_is_refused_with_what_to_write(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        parse_template(template)


def test_case_filters_are_refused_where_the_warehouse_computes_templates(
    tmp_path: Path, retl_cli: Any
) -> None:
    # With state in a PostgreSQL warehouse the template runs there: upper('straße') is
    # 'STRAßE' in PostgreSQL and 'STRAẞE' in DuckDB, which computes the preview.
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(
        "version: 1\nwarehouses:\n  pg:\n    url: postgresql://retl@127.0.0.1/test\n"
        "destinations:\n  out:\n    type: file\n    path: out\n"
        "state:\n  backend: warehouse\n  warehouse: pg\n"
    )
    (tmp_path / "syncs" / "people.yml").write_text(
        "warehouse: pg\nsource:\n  sql: select id, name from people\ndestination:\n"
        "  name: out\n  object: people\nmode: upsert\nprimary_key: id\nmapping:\n  id: id\n"
        "  shout: '{{ name | trim | upper }}'\n  tidy: '{{ name | trim }}'\n"
    )

    result = retl_cli("validate", "--json", "--project-dir", str(tmp_path))

    assert result.code == 1
    (problem,) = result.json()["problems"]
    assert problem["field"] == "mapping.shout" and problem["line"] == 11
    assert "upper filter is not portable" in problem["message"]
    assert "upper(column)" in problem["hint"]
