"""The YAML loader: line numbers for every path, duplicate keys, ${ENV} interpolation."""

from __future__ import annotations

from reverse_etl.config.yamlio import interpolate, load_yaml, uses_env

SYNC = """\
warehouse: demo
source:
  sql: |
    select id, email
    from customers
destination:
  name: app_db
  object: public.contacts
mapping:
  customer_id: id
  email: email
alerts: [ops, oncall]
"""


def test_every_nested_key_remembers_its_line() -> None:
    doc = load_yaml(SYNC, "syncs/a.yml", {})

    assert doc.problems == []
    assert doc.line_of(("warehouse",)) == 1
    assert doc.line_of(("source", "sql")) == 3
    assert doc.line_of(("destination", "object")) == 8
    assert doc.line_of(("mapping", "email")) == 11
    assert doc.line_of(("alerts", 1)) == 12


def test_a_missing_path_falls_back_to_its_nearest_ancestor() -> None:
    doc = load_yaml(SYNC, "syncs/a.yml", {})

    assert doc.line_of(("mapping", "not_there"), key=True) == 9
    assert doc.line_of(("mapping", "not_there")) == 10  # a block mapping's value starts there
    assert doc.line_of(("nothing", "at", "all")) == 1


def test_key_lines_point_at_the_key_not_the_value() -> None:
    doc = load_yaml("mapping:\n  name:\n    value: x\n", "s.yml", {})

    assert doc.line_of(("mapping", "name"), key=True) == 2
    assert doc.line_of(("mapping", "name")) == 3


def test_a_problem_carries_file_line_and_field_path() -> None:
    doc = load_yaml(SYNC, "syncs/a.yml", {})

    problem = doc.problem(("alerts", 1), "unknown alert channel 'oncall'")

    assert problem.format() == "syncs/a.yml:12: alerts[1]: unknown alert channel 'oncall'"


def test_env_variables_are_interpolated_and_raw_text_is_kept() -> None:
    doc = load_yaml("url: postgresql://u:${PW}@db/app\n", "retl.yml", {"PW": "s3cret"})

    assert doc.data == {"url": "postgresql://u:s3cret@db/app"}
    assert doc.raw[("url",)] == "postgresql://u:${PW}@db/app"


def test_a_default_is_used_only_when_the_variable_is_unset() -> None:
    text = "a: ${HOST:-localhost}\nb: ${PORT:-5432}\nc: ${EMPTY:-x}\n"

    doc = load_yaml(text, "retl.yml", {"PORT": "6543", "EMPTY": ""})

    assert doc.data == {"a": "localhost", "b": "6543", "c": ""}
    assert doc.problems == []


def test_double_dollar_is_a_literal_dollar() -> None:
    text, missing = interpolate("price: $$5, ref: $${NOT_A_VAR}", {})

    assert text == "price: $5, ref: ${NOT_A_VAR}"
    assert missing == []


def test_a_missing_variable_is_named_with_file_and_line() -> None:
    doc = load_yaml("version: 1\ndestinations:\n  app:\n    url: ${APP_DB_URL}\n", "retl.yml", {})

    [problem] = doc.problems
    assert problem.format() == (
        "retl.yml:4: destinations.app.url: environment variable APP_DB_URL is not set"
    )
    assert problem.hint is not None and "APP_DB_URL" in problem.hint
    assert doc.data["destinations"]["app"]["url"] == "${APP_DB_URL}"


def test_interpolation_does_not_reparse_yaml() -> None:
    doc = load_yaml("sql: ${Q}\n", "s.yml", {"Q": "select 1 as a: b # not a comment"})

    assert doc.data == {"sql": "select 1 as a: b # not a comment"}


def test_uses_env_recognises_both_forms() -> None:
    assert uses_env("${TOKEN}")
    assert uses_env("postgresql://u:${PW:-x}@h/db")
    assert not uses_env("$$TOKEN")
    assert not uses_env("abc")


def test_duplicate_keys_are_reported_with_both_lines() -> None:
    doc = load_yaml("mode: upsert\nbatch_size: 10\nmode: insert\n", "syncs/a.yml", {})

    [problem] = doc.problems
    assert problem.format() == "syncs/a.yml:3: mode: duplicate key 'mode' (first on line 1)"
    assert doc.data == {"mode": "upsert", "batch_size": 10}


def test_duplicate_keys_are_found_in_nested_mappings() -> None:
    doc = load_yaml("mapping:\n  a: x\n  b: y\n  a: z\n", "s.yml", {})

    assert [p.format() for p in doc.problems] == [
        "s.yml:4: mapping.a: duplicate key 'a' (first on line 2)"
    ]


def test_a_syntax_error_is_a_problem_with_a_line_and_no_data() -> None:
    doc = load_yaml("mode: upsert\nmapping:\n  a: b\n   c: d\n", "s.yml", {})

    assert doc.data is None
    [problem] = doc.problems
    assert problem.line == 4
    assert problem.message.startswith("invalid YAML: unexpected ':'")


def test_tab_indentation_is_a_problem_at_the_tab() -> None:
    doc = load_yaml("mapping:\n\temail: email\n", "s.yml", {})

    [problem] = doc.problems
    assert problem.format() == "s.yml:2: invalid YAML: tab character in indentation"


def test_an_unclosed_quote_points_at_where_the_string_starts() -> None:
    doc = load_yaml("mode: upsert\nsource:\n  sql: 'select 1\nmapping:\n  a: b\n", "s.yml", {})

    [problem] = doc.problems
    assert (
        problem.format() == "s.yml:3: invalid YAML: the quoted string starting here is never closed"
    )


def test_an_empty_file_is_an_empty_mapping() -> None:
    doc = load_yaml("# nothing yet\n", "retl.yml", {})

    assert doc.data == {}
    assert doc.problems == []


def test_non_string_keys_become_strings() -> None:
    doc = load_yaml("mapping:\n  1: id\n  true: flag\n", "s.yml", {})

    assert doc.data == {"mapping": {"1": "id", "True": "flag"}}


def test_complex_keys_are_rejected() -> None:
    doc = load_yaml("? [a, b]\n: x\nok: 1\n", "s.yml", {})

    assert [p.message for p in doc.problems] == ["keys must be plain strings"]
    assert doc.data == {"ok": 1}


def test_anchors_and_merge_keys_work() -> None:
    text = "base: &b\n  batch_size: 10\nsync:\n  <<: *b\n  mode: insert\n"

    doc = load_yaml(text, "s.yml", {})

    assert doc.data["sync"] == {"batch_size": 10, "mode": "insert"}
    assert doc.problems == []


def test_env_values_are_not_yaml_typed() -> None:
    doc = load_yaml("batch_size: ${SIZE}\n", "s.yml", {"SIZE": "10"})

    assert doc.data == {"batch_size": "10"}


def test_interpolated_secrets_are_registered_for_redaction() -> None:
    from reverse_etl.redact import redact

    text = """\
warehouses:
  dw:
    url: ${DW_URL}
destinations:
  crm:
    token: ${CRM_TOKEN}
alerts:
  pager:
    url: ${PAGER_URL}
    headers:
      Authorization: Bearer ${PAGER_TOKEN}
"""
    env = {
        "DW_URL": "postgresql://ana:dw-pass-1@db/dw",
        "CRM_TOKEN": "crm-token-2",
        "PAGER_URL": "https://hooks.example.com/T0/B0/hook-path-3",
        "PAGER_TOKEN": "pager-token-4",
    }
    load_yaml(text, "retl.yml", env)

    echoed = "driver said: dw-pass-1 crm-token-2 https://hooks.example.com/T0/B0/hook-path-3 pager-token-4"
    for secret in ("dw-pass-1", "crm-token-2", "hook-path-3", "pager-token-4"):
        assert secret not in redact(echoed)


def test_a_mapping_field_named_password_is_not_a_secret() -> None:
    from reverse_etl.redact import redact

    load_yaml("mapping:\n  password: password_hash\n", "syncs/a.yml", {})
    assert redact("column password_hash") == "column password_hash"
