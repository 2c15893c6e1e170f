"""How retl prepares a sync's SQL and reports the database's errors about it."""

from __future__ import annotations

from reverse_etl.redact import register_secret
from reverse_etl.warehouse.base import database_message, limit_zero, source_statement


def test_source_statement_drops_trailing_semicolons_and_comment_lines() -> None:
    sql = "  select id\nfrom customers -- active only\n;\n-- the end\n;;  "
    assert source_statement(sql) == "select id\nfrom customers -- active only"


def test_limit_zero_keeps_line_numbers_and_survives_a_trailing_comment() -> None:
    wrapped = limit_zero("select id\nfrom customers -- note;")
    assert wrapped == ("SELECT * FROM (select id\nfrom customers -- note\n) AS retl_source LIMIT 0")


def test_database_message_keeps_the_first_lines_without_retls_wrapping() -> None:
    error = Exception(
        'column "nope" does not exist\n'
        'LINE 1: DECLARE "c_7f_2" CURSOR FOR select nope\n'
        "                                           ^\n"
        "HINT: one\nmore\nlines"
    )
    assert database_message(error) == (
        'column "nope" does not exist\nLINE 1: select nope\n               ^'
    )


def test_database_message_of_a_mysql_error_reads_like_the_mysql_client() -> None:
    error = Exception(1054, "Unknown column 'nope' in 'field list'")
    assert database_message(error) == ("ERROR 1054: Unknown column 'nope' in 'field list'")


def test_database_message_removes_secrets() -> None:
    register_secret("hunter22")
    error = Exception('auth failed for postgresql://ana:hunter22@db/dw: password "hunter22"')
    assert database_message(error) == ('auth failed for postgresql://ana:***@db/dw: password "***"')
