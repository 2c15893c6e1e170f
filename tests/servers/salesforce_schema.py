"""Salesforce's sObject schema as the contract server knows it: objects, fields, value checks.

The describe shape and the error objects follow the pages cited in servers/salesforce.py.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class Field:
    """One sObject field as describe shows it."""

    name: str
    # id string textarea email url picklist boolean int double currency date datetime reference
    type: str
    createable: bool = True
    updateable: bool = True
    nillable: bool = True
    defaulted: bool = False
    external_id: bool = False
    id_lookup: bool = False
    unique: bool = False
    length: int = 255
    picklist: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        """Required on create: createable, not nillable and not defaulted on create."""
        return self.createable and not self.nillable and not self.defaulted

    def describe(self) -> dict[str, Any]:
        """The field as sObject Describe lists it."""
        return {
            "name": self.name,
            "label": self.name.removesuffix("__c").replace("_", " "),
            "type": self.type,
            "length": self.length
            if self.type in ("string", "textarea", "email", "picklist")
            else 0,
            "createable": self.createable,
            "updateable": self.updateable,
            "nillable": self.nillable,
            "defaultedOnCreate": self.defaulted,
            "externalId": self.external_id,
            "idLookup": self.id_lookup,
            "unique": self.unique,
            "custom": self.name.endswith("__c"),
            "picklistValues": [
                {"active": True, "defaultValue": False, "label": v, "value": v}
                for v in self.picklist
            ],
        }


@dataclass(frozen=True)
class SObject:
    """An sObject type with its key prefix and fields."""

    name: str
    key_prefix: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field | None:
        """The field called `name` (case-insensitive, as Salesforce), if it exists."""
        return next((f for f in self.fields if f.name.lower() == name.lower()), None)


# Flags: required = not nillable; defaulted = defaultedOnCreate; system = neither createable nor
# updateable (and defaulted); readonly = neither createable nor updateable; external = external id
# (unique, idLookup); lookup = idLookup.
SYSTEM = """
Id                  id          system lookup length=18
CreatedDate         datetime    system
LastModifiedDate    datetime    system
IsDeleted           boolean     system
"""
CATALOG = {
    ("Account", "001"): """
Name                string      required lookup
Industry            picklist    values=Banking|Retail|Technology
AnnualRevenue       currency
NumberOfEmployees   int
Website             url
External_Id__c      string      external
""",
    ("Contact", "003"): """
LastName            string      required length=80
FirstName           string      length=40
Email               email       lookup length=80
Birthdate           date
HasOptedOutOfEmail  boolean     required defaulted
AccountId           reference   length=18
Name                string      readonly length=121
External_Id__c      string      external
""",
    ("Project__c", "a01"): """
Name                string      required length=80
Code__c             string      external length=40
Start_Date__c       date
Budget__c           double
Active__c           boolean     required defaulted
""",
}


def _fields(table: str) -> tuple[Field, ...]:
    """Fields from lines of `Name type [flags] [length=N] [values=a|b]` (flags above)."""
    fields = []
    for line in filter(None, table.splitlines()):
        name, kind, *flags = line.split()
        opts = dict(f.split("=", 1) for f in flags if "=" in f)
        fixed = "system" in flags or "readonly" in flags
        fields.append(
            Field(
                name,
                kind,
                createable=not fixed,
                updateable=not fixed,
                nillable="required" not in flags and "system" not in flags,
                defaulted="defaulted" in flags or "system" in flags,
                external_id="external" in flags,
                id_lookup="lookup" in flags or "external" in flags,
                unique="external" in flags,
                length=int(opts.get("length", 255)),
                picklist=tuple(opts["values"].split("|")) if "values" in opts else (),
            )
        )
    return tuple(fields)


def default_sobjects() -> list[SObject]:
    """Account, Contact and a custom object Project__c with typical fields."""
    return [
        SObject(name, prefix, _fields(SYSTEM + table)) for (name, prefix), table in CATALOG.items()
    ]


def sf_error(code: str, message: str, fields: list[str] | None = None) -> dict[str, Any]:
    """A Salesforce error object; top-level errors use errorCode, record errors statusCode."""
    if fields is None:
        return {"message": message, "errorCode": code}
    return {"statusCode": code, "message": message, "fields": fields}


def check_value(f: Field, value: Any) -> dict[str, Any] | None:
    """INVALID_TYPE_ON_FIELD_IN_RECORD and friends when `value` does not fit the field's type."""
    if value is None:
        return (
            None
            if f.nillable
            else sf_error(
                "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{f.name}]", [f.name]
            )
        )
    bad = sf_error(
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        f"{f.name}: value not of required type: {value!r}",
        [f.name],
    )
    if f.type == "boolean":
        return None if isinstance(value, bool) else bad
    if f.type == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else bad
    if f.type in ("double", "currency", "percent"):
        return (
            None
            if isinstance(value, int | float | Decimal) and not isinstance(value, bool)
            else bad
        )
    if not isinstance(value, str):
        return bad
    if f.type == "date":
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return bad
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            return bad
    if f.type == "datetime":
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return bad
    if f.type == "email" and not EMAIL.match(value):
        return sf_error("INVALID_EMAIL_ADDRESS", f"Email: invalid email address: {value}", [f.name])
    if f.type == "picklist" and f.picklist and value not in f.picklist:
        return sf_error(
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            f"{f.name}: bad value for restricted picklist field: {value}",
            [f.name],
        )
    if len(value) > f.length:
        return sf_error(
            "STRING_TOO_LONG",
            f"{f.name}: data value too large: {value[:20]}... (max length={f.length})",
            [f.name],
        )
    return None
