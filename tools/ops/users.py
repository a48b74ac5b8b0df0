"""Named users: one login per person, each with a role Orthanc enforces.

    python -m tools.ops.users [--site <name>] [--region R] add <NAME> --role viewer|uploader|researcher|admin
    python -m tools.ops.users [--site <name>] [--region R] list [--json]
    python -m tools.ops.users [--site <name>] [--region R] disable|enable|remove|reset <NAME>

The users live in the site's ``<name>/users`` secret (created empty by Terraform, encrypted with
the site key): ``{"users": {NAME: {"role", "password", "enabled", "changed"}}}``. Every host reads
it at its next refresh (within 5 minutes): it registers the enabled users with Orthanc, writes
their roles for the roles script (docker/orthweb_roles.py) and gives nginx their logins for the
failed-login limit. A disabled or removed user is refused (401) after that refresh; a role's
forbidden request gets 403.

``add`` and ``reset`` generate the password and print it once, on standard output: hand it to the
person; it is stored only in the secret (Orthanc compares passwords as given, so they cannot be
stored hashed). ``list`` never shows a password. The ``admin`` user stays the break-glass account
(its password is in ``<name>/orthanc-admin``) and cannot be named here.

Exit codes: 0 done, 1 AWS or stored-state problem, 2 bad arguments (an unknown role, a name taken
or unknown) or no AWS credentials.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import secrets
import sys
from typing import Any

from config.facts import ORTHANC_ADMIN_USER, USER_ROLES, USERS_SECRET
from config.inputs import allowed
from tools.ops.modalities import Secrets, StateError, UsageError, add_site_arguments, run_on_secrets, site_arguments

USER_NAME = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
USER_RULE = f"2-32 chars: lowercase letters, digits, . _ -, starting with a letter; not {ORTHANC_ADMIN_USER}"
PASSWORD_BYTES = 24


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _users(secrets_: Secrets) -> tuple[dict[str, dict[str, Any]], str | None]:
    stored = secrets_.read(USERS_SECRET)
    users = (stored.value or {}).get("users", {})
    if not isinstance(users, dict):
        raise StateError(f"{secrets_.secret_id(USERS_SECRET)} does not hold the users document")
    return users, stored.version


def _known(users: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    if name not in users:
        raise UsageError(allowed("NAME", name, f"a user of this site ({', '.join(sorted(users)) or 'none yet'})"))
    return users[name]


def run(secrets_: Secrets, command: str, name: str = "", role: str = "", as_json: bool = False) -> list[str]:
    """One command on the users secret; returns the lines to print."""
    users, version = _users(secrets_)
    if command == "list":
        listed = {n: {k: u.get(k) for k in ("role", "enabled", "changed")} for n, u in sorted(users.items())}
        if as_json:
            return [json.dumps(listed, indent=1)]
        return [
            f"{n}\t{u['role']}\t{'enabled' if u['enabled'] else 'disabled'}\t{u['changed']}" for n, u in listed.items()
        ] or ["no named users yet (the admin account is in <name>/orthanc-admin)"]
    lines: list[str] = []
    if command == "add":
        if name in users:
            raise UsageError(allowed("NAME", name, "a name not yet taken (reset or enable an existing user)"))
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        users[name] = {"role": role, "password": password, "enabled": True, "changed": _now()}
        lines = [f"added {name} ({role}); password, shown once: {password}"]
    elif command == "reset":
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        _known(users, name).update(password=password, changed=_now())
        lines = [f"new password for {name}, shown once: {password}"]
    elif command in ("disable", "enable"):
        _known(users, name).update(enabled=command == "enable", changed=_now())
        lines = [f"{command}d {name}"]
    elif command == "remove":
        _known(users, name)
        del users[name]
        lines = [f"removed {name}"]
    secrets_.write(USERS_SECRET, {"users": users}, version)
    return [*lines, "every host applies it at its next refresh (within 5 minutes)"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.ops.users", description=__doc__.split("\n")[0])
    add_site_arguments(p)
    commands = p.add_subparsers(dest="command", required=True, metavar="{add,list,disable,enable,remove,reset}")
    add = commands.add_parser("add", help="add a user with a role; prints the password once")
    add.add_argument("name", metavar="NAME", help=USER_RULE)
    add.add_argument("--role", required=True, help=f"one of {', '.join(USER_ROLES)}")
    listing = commands.add_parser("list", help="name, role, enabled, last change (never a password)")
    listing.add_argument("--json", action="store_true", help="print the users as JSON")
    for command, text in (
        ("disable", "refuse a user's logins (kept for enable)"),
        ("enable", "accept a disabled user's logins again"),
        ("remove", "delete a user"),
        ("reset", "a new password for a user; prints it once"),
    ):
        commands.add_parser(command, help=text).add_argument("name", metavar="NAME")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    problems = site_arguments(p, a)
    name = getattr(a, "name", "")
    if a.command != "list" and (not USER_NAME.fullmatch(name) or name == ORTHANC_ADMIN_USER):
        problems.append(allowed("NAME", name, USER_RULE))
    if a.command == "add" and a.role not in USER_ROLES:
        problems.append(allowed("--role", a.role, ", ".join(USER_ROLES)))
    if problems:
        p.error("; ".join(problems))
    return run_on_secrets(
        p, a, lambda secrets: run(secrets, a.command, name, getattr(a, "role", ""), getattr(a, "json", False))
    )


if __name__ == "__main__":
    sys.exit(main())
