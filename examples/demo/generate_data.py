"""Generate the demo warehouse's CSVs: accounts, customers and events of a made-up SaaS company.

Deterministic (fixed seed, fixed dates, no clock reads): running it again rewrites byte-identical
files, so the committed CSVs and `warehouse.duckdb` can always be rebuilt and compared.
The data is realistic on purpose, warts included: a few null emails and names, emails with
stray spaces and capitals, a shared email, plans in mixed case, anonymous and orphaned events.

    python examples/demo/generate_data.py            # writes examples/demo/data/*.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from datetime import datetime, timedelta
from pathlib import Path

SEED = 20240601
N_ACCOUNTS = 500
N_CUSTOMERS = 3_000
N_EVENTS = 10_000
# The data describes the company as of this moment; nothing after it exists.
AS_OF = datetime(2025, 1, 15, 0, 0, 0)
START = datetime(2022, 1, 1, 0, 0, 0)

FIRST_NAMES = (  # noqa: SIM905 - data, not code
    "Olivia Liam Emma Noah Amelia Oliver Sophia Elijah Mia Lucas Ava Mateo Isabella Levi Luna "
    "Ethan Harper Leo Evelyn Hiroshi Aiko Priya Arjun Fatima Omar Chen Wei Sofia Diego Lena "
    "Jonas Ingrid Mikkel Zoe Kofi Amara Yusuf Nadia Pierre Camille Lars Freya Mateus Ana Raj "
    "Meera Tomás Lucía Kenji Yuki Hannah Felix Clara Emil Ida Oscar Elsa Hugo Alice Jakob "
    "Maja"
).split()
LAST_NAMES = [
    *(  # noqa: SIM905 - data, not code
        "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
        "Lopez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
        "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen "
        "Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Müller "
        "Schmidt Tanaka Sato Kim Park Patel Shah Okafor Mensah Novak Kowalski Jensen Hansen "
        "Larsen Dubois Moreau O'Brien"
    ).split(),
    "van der Berg",
    "de la Cruz",
]
COMPANY_WORDS_A = (  # noqa: SIM905 - data, not code
    "Acme Globex Initech Umbrella Stark Wayne Wonka Hooli Vandelay Soylent Cyberdyne Tyrell "
    "Aperture Massive Northwind Contoso Fabrikam Tailspin Litware Proseware Adatum Woodgrove "
    "Blue Yonder Lucerne Margie Fourth Coffee Alpine Ski Humongous Wide World Southridge Trey "
    "Bluefin Redwood Ironclad Lumen Quantum Helix Nimbus Orbit Pioneer Summit Vertex Zenith"
).split()
COMPANY_WORDS_B = (  # noqa: SIM905 - data, not code
    "Labs Systems Analytics Logistics Foods Health Media Robotics Energy Capital Software "
    "Networks Studios Bank Insurance Retail Travel Mobility Cloud Security Games Bio"
).split()
SUFFIXES = ("Inc", "LLC", "Ltd", "GmbH", "SA", "AB", "BV", "")
INDUSTRIES = (
    "software",
    "retail",
    "finance",
    "healthcare",
    "media",
    "logistics",
    "education",
    "manufacturing",
)
COUNTRIES = ("US", "US", "US", "GB", "DE", "FR", "NL", "SE", "JP", "IN", "BR", "CA", "AU", "ES")
PLANS = ("free", "starter", "pro", "enterprise")
PLAN_WEIGHTS = (40, 30, 22, 8)
PLAN_PRICE_PER_SEAT = {"free": 0, "starter": 12, "pro": 29, "enterprise": 59}
EMAIL_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me")
EVENT_TYPES = (
    "page_view",
    "login",
    "feature_used",
    "report_exported",
    "invite_sent",
    "support_ticket_opened",
    "invoice_paid",
)
EVENT_WEIGHTS = (45, 20, 18, 6, 4, 4, 3)
FEATURES = ("dashboards", "alerts", "api", "sso", "exports", "audit_log", "segments")
PAGES = ("/home", "/pricing", "/settings", "/reports", "/integrations", "/billing", "/docs")

ACCOUNT_COLUMNS = [
    "account_id",
    "name",
    "domain",
    "industry",
    "country",
    "plan",
    "seats",
    "mrr",
    "status",
    "created_at",
    "updated_at",
    "churned_at",
]
CUSTOMER_COLUMNS = [
    "customer_id",
    "account_id",
    "email",
    "first_name",
    "last_name",
    "plan",
    "country",
    "marketing_opt_in",
    "status",
    "created_at",
    "updated_at",
    "last_seen_at",
    "erasure_requested_at",
]
EVENT_COLUMNS = ["event_id", "customer_id", "event_type", "occurred_at", "properties"]


def ts(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    seconds = max(int((end - start).total_seconds()), 1)
    return start + timedelta(seconds=rng.randrange(seconds))


def slug(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def make_accounts(rng: random.Random) -> list[dict[str, object]]:
    accounts: list[dict[str, object]] = []
    used_names: set[str] = set()
    for account_id in range(1, N_ACCOUNTS + 1):
        while True:
            base = f"{rng.choice(COMPANY_WORDS_A)} {rng.choice(COMPANY_WORDS_B)}"
            if base not in used_names:
                used_names.add(base)
                break
        suffix = rng.choice(SUFFIXES)
        name = f"{base}, {suffix}" if suffix in ("Inc", "LLC") and rng.random() < 0.3 else base
        if suffix and "," not in name:
            name = f"{name} {suffix}"
        plan = rng.choices(PLANS, PLAN_WEIGHTS)[0]
        seats = {
            "free": rng.randint(1, 3),
            "starter": rng.randint(2, 15),
            "pro": rng.randint(10, 80),
            "enterprise": rng.randint(50, 900),
        }[plan]
        created = between(rng, START, AS_OF - timedelta(days=30))
        updated = between(rng, created, AS_OF)
        churned_at = None
        status = "active"
        if rng.random() < 0.12:
            status = "churned"
            churned_at = between(rng, created + timedelta(days=20), AS_OF)
            updated = max(updated, churned_at)
        elif rng.random() < 0.08:
            status = "trial"
        mrr: str = f"{seats * PLAN_PRICE_PER_SEAT[plan]:.2f}"
        if plan == "free" and rng.random() < 0.5:
            mrr = ""  # billing never wrote a row for many free accounts
        domain = f"{slug(base)}.{rng.choice(('com', 'io', 'co', 'de', 'net'))}"
        if rng.random() < 0.02:
            domain = ""
        accounts.append(
            {
                "account_id": account_id,
                "name": name,
                "domain": domain,
                "industry": rng.choice(INDUSTRIES),
                "country": rng.choice(COUNTRIES),
                "plan": plan,
                "seats": seats,
                "mrr": mrr,
                "status": status,
                "created_at": ts(created),
                "updated_at": ts(updated),
                "churned_at": ts(churned_at),
            }
        )
    return accounts


def make_customers(
    rng: random.Random, accounts: list[dict[str, object]]
) -> list[dict[str, object]]:
    customers: list[dict[str, object]] = []
    emails: list[str] = []
    for customer_id in range(1001, 1001 + N_CUSTOMERS):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        account = rng.choice(accounts) if rng.random() < 0.9 else None
        if account is not None and account["domain"] and rng.random() < 0.7:
            domain = str(account["domain"])
        else:
            domain = rng.choice(EMAIL_DOMAINS)
        local = f"{slug(first)}.{slug(last)}"
        if rng.random() < 0.5:
            local += str(rng.randint(1, 999))
        email: str = f"{local}@{domain}"
        while email in emails:
            email = f"{local}{rng.randint(1000, 9999)}@{domain}"
        emails.append(email)

        plan = str(account["plan"]) if account is not None else "free"
        created_floor = (
            datetime.strptime(str(account["created_at"]), "%Y-%m-%d %H:%M:%S")
            if account is not None
            else START
        )
        created = between(rng, created_floor, AS_OF - timedelta(days=1))
        updated = between(rng, created, AS_OF)
        last_seen = between(rng, created, AS_OF) if rng.random() < 0.93 else None
        status = "active"
        if (account is not None and account["status"] == "churned") or rng.random() < 0.05:
            status = "churned"
        erasure = None
        if rng.random() < 0.006:
            erasure = between(rng, created, AS_OF)
            updated = max(updated, erasure)

        # Real-world warts, each on a handful of rows.
        first_out: str = first
        last_out: str = last
        roll = rng.random()
        if roll < 0.01:
            email = ""  # null email: the contact came from a sales import without one
        elif roll < 0.03:
            email = f"  {email[0].upper()}{email[1:]} "
        elif roll < 0.04:
            email = email.upper()
        if rng.random() < 0.01:
            last_out = ""
        if rng.random() < 0.01:
            first_out = f"{first} "
        plan_out = plan.capitalize() if rng.random() < 0.02 else plan
        customers.append(
            {
                "customer_id": customer_id,
                "account_id": account["account_id"] if account is not None else "",
                "email": email,
                "first_name": first_out,
                "last_name": last_out,
                "plan": plan_out,
                "country": rng.choice(COUNTRIES) if rng.random() < 0.97 else "",
                "marketing_opt_in": "true" if rng.random() < 0.55 else "false",
                "status": status,
                "created_at": ts(created),
                "updated_at": ts(updated),
                "last_seen_at": ts(last_seen),
                "erasure_requested_at": ts(erasure),
            }
        )
    # Two people signed up with the same work address (a shared inbox), a classic.
    customers[-1]["email"] = customers[-2]["email"]
    return customers


def make_events(rng: random.Random, customers: list[dict[str, object]]) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    active = [c for c in customers if c["last_seen_at"]]
    for _ in range(N_EVENTS):
        roll = rng.random()
        customer_id: object
        if roll < 0.02:
            customer_id = ""  # anonymous visitor
            start = START
        elif roll < 0.025:
            customer_id = rng.randint(9000, 9100)  # deleted upstream: an orphaned event
            start = START
        else:
            customer = rng.choice(active)
            customer_id = customer["customer_id"]
            start = datetime.strptime(str(customer["created_at"]), "%Y-%m-%d %H:%M:%S")
        # Skew towards recent activity, as product analytics always are.
        recent_start = max(start, AS_OF - timedelta(days=120))
        occurred = between(rng, recent_start if rng.random() < 0.7 else start, AS_OF)
        event_type = rng.choices(EVENT_TYPES, EVENT_WEIGHTS)[0]
        properties: dict[str, object]
        if event_type == "page_view":
            properties = {"path": rng.choice(PAGES)}
        elif event_type == "feature_used":
            properties = {"feature": rng.choice(FEATURES)}
        elif event_type == "invoice_paid":
            properties = {"amount": round(rng.uniform(10, 4000), 2), "currency": "USD"}
        elif event_type == "support_ticket_opened":
            properties = {"priority": rng.choice(("low", "normal", "high"))}
        else:
            properties = {}
        events.append(
            {
                "event_id": "",
                "customer_id": customer_id,
                "event_type": event_type,
                "occurred_at": ts(occurred),
                "properties": json.dumps(properties, sort_keys=True) if properties else "",
            }
        )
    # Ids grow with time, as an append-only event log's do.
    events.sort(key=lambda e: str(e["occurred_at"]))
    for number, event in enumerate(events, start=1):
        event["event_id"] = f"evt_{number:06d}"
    return events


def write_csv(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def generate(out_dir: Path) -> dict[str, int]:
    """Write accounts.csv, customers.csv and events.csv into `out_dir`; return row counts."""
    rng = random.Random(SEED)
    accounts = make_accounts(rng)
    customers = make_customers(rng, accounts)
    events = make_events(rng, customers)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "accounts.csv", ACCOUNT_COLUMNS, accounts)
    write_csv(out_dir / "customers.csv", CUSTOMER_COLUMNS, customers)
    write_csv(out_dir / "events.csv", EVENT_COLUMNS, events)
    return {"accounts": len(accounts), "customers": len(customers), "events": len(events)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "data", help="output folder"
    )
    args = parser.parse_args()
    for table, count in generate(args.out).items():
        print(f"{table:<10} {count:>6} rows -> {args.out / (table + '.csv')}")


if __name__ == "__main__":
    main()
