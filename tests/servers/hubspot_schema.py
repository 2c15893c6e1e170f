"""HubSpot's CRM schema as the contract server knows it: objects, properties, value formats.

The property definition shape and the value formats follow the pages cited in servers/hubspot.py.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class Property:
    """A HubSpot property definition."""

    name: str
    type: str  # string | number | date | datetime | bool | enumeration
    field_type: str
    unique: bool = False
    read_only: bool = False
    options: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The property as GET /crm/v3/properties/{objectType} lists it."""
        return {
            "name": self.name,
            "label": self.name.replace("_", " ").title(),
            "type": self.type,
            "fieldType": self.field_type,
            "groupName": "contactinformation",
            "description": "",
            "options": [
                {"label": o, "value": o, "displayOrder": i, "hidden": False}
                for i, o in enumerate(self.options)
            ],
            "hasUniqueValue": self.unique,
            "hidden": False,
            "formField": not self.read_only,
            "calculated": False,
            "externalOptions": False,
            "modificationMetadata": {
                "archivable": not self.read_only,
                "readOnlyDefinition": self.read_only,
                "readOnlyValue": self.read_only,
            },
            "archived": False,
        }


@dataclass(frozen=True)
class ObjectType:
    """A CRM object type: the names it answers to and its properties."""

    name: str
    type_id: str
    properties: tuple[Property, ...]
    aliases: tuple[str, ...] = ()

    def prop(self, name: str) -> Property | None:
        """The property called `name`, if it exists."""
        return next((p for p in self.properties if p.name == name), None)


COMMON = """
hs_object_id        number      number          unique readonly
createdate          datetime    date            readonly
hs_lastmodifieddate datetime    date            readonly
"""
CATALOG = {
    ("contacts", "0-1", ""): """
email               string      text            unique
firstname           string      text
lastname            string      text
phone               string      phonenumber
date_of_birth       date        date
last_seen_at        datetime    date
is_vip              bool        booleancheckbox options=true|false
lifetime_value      number      number
lifecyclestage      enumeration radio           options=lead|customer|other
external_id         string      text            unique
hs_email_domain     string      text            readonly
""",
    ("companies", "0-2", ""): """
name                string      text
domain              string      text            unique
numberofemployees   number      number
founded_on          date        date
external_id         string      text            unique
""",
    ("deals", "0-3", ""): """
dealname            string      text
amount              number      number
closedate           datetime    date
dealstage           enumeration select          options=open|won|lost
external_id         string      text            unique
""",
    ("projects", "2-1000001", "p1234567_projects"): """
project_code        string      text            unique
title               string      text
starts_on           date        date
budget              number      number
active              bool        booleancheckbox options=true|false
""",
}


def _properties(table: str) -> tuple[Property, ...]:
    """Properties from lines of `name type fieldType [unique] [readonly] [options=a|b]`."""
    props = []
    for line in filter(None, table.splitlines()):
        name, kind, field_type, *flags = line.split()
        options = next((f.removeprefix("options=") for f in flags if f.startswith("options=")), "")
        props.append(
            Property(
                name,
                kind,
                field_type,
                unique="unique" in flags,
                read_only="readonly" in flags,
                options=tuple(options.split("|")) if options else (),
            )
        )
    return tuple(props)


def default_objects() -> list[ObjectType]:
    """contacts, companies, deals and a custom object `projects`, with typical properties."""
    return [
        ObjectType(name, type_id, _properties(COMMON + table), (alias,) if alias else ())
        for (name, type_id, alias), table in CATALOG.items()
    ]


def check_value(prop: Property, value: Any) -> tuple[str, str] | None:
    """(error, message) when `value` is not in the format HubSpot expects for the property type."""
    if not isinstance(value, str):
        return "INVALID_TYPE", f"{value!r} is not a string; HubSpot property values are strings"
    if value == "":
        return None  # clears the property
    if prop.name == "email" and not EMAIL.match(value):
        return "INVALID_EMAIL", f"Email address {value} is invalid"
    valid = {
        "number": _is_number,
        "bool": lambda v: v in ("true", "false"),
        "enumeration": lambda v: v in prop.options,
        "date": _is_date,
        "datetime": _is_datetime,
    }.get(prop.type)
    if valid is None or valid(value):
        return None
    code, expected = _FORMATS[prop.type]
    return code, f"{value!r} is not a valid {prop.type} for {prop.name}: expected {expected}"


_FORMATS = {
    "number": ("INVALID_NUMBER", "a decimal number as a string"),
    "bool": ("INVALID_BOOLEAN", '"true" or "false"'),
    "enumeration": ("INVALID_OPTION", "one of the property's options"),
    "date": ("INVALID_DATE", "YYYY-MM-DD or epoch millis at midnight UTC"),
    "datetime": ("INVALID_DATETIME", "epoch millis or ISO 8601 with a zone"),
}


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _is_date(value: str) -> bool:
    if value.isdigit():
        return int(value) % 86_400_000 == 0
    try:
        return re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None and bool(
            dt.date.fromisoformat(value)
        )
    except ValueError:
        return False


def _is_datetime(value: str) -> bool:
    if value.isdigit():
        return True
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False
