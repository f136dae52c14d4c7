"""`styledrop users ...`: users and API keys from the command line, through storage.accounts (the same functions
and validation as the admin API), so a leaked key can be revoked without SQL.

    styledrop users create NAME [--admin]     prints the new API key once (stdout)
    styledrop users list
    styledrop users keys [USER]               key id, user, prefix, created, last used, revoked
    styledrop users add-key USER              prints the new key once
    styledrop users revoke-key KEY_ID         the key and the browser sessions signed in with it stop working
    styledrop users rotate-key KEY_ID         prints a new key for the same user; the old one is revoked
    styledrop users disable USER / enable USER

USER is a name or an id. Errors go to stderr with the bad value, exit status 1: a refused name or key here, no
database where the settings point (nothing is created) or a database without the schema in worker/cli/failures.py.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from worker.cli.failures import existing_database

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _run(session: Session, args: argparse.Namespace) -> int:
    from storage import accounts

    command = args.users_command
    if command == "create":
        user, _, plaintext = accounts.add_user(session, name=args.name, is_admin=args.admin)
        sys.stderr.write(f"created user {user.name} ({user.id}); the API key is shown once:\n")
        sys.stdout.write(f"{plaintext}\n")
    elif command == "list":
        for u in accounts.list_users(session):
            flags = ",".join(f for f, on in (("admin", u.is_admin), ("disabled", u.disabled)) if on) or "-"
            sys.stdout.write(f"{u.id}\t{u.name}\t{flags}\t{_when(u.created_at)}\n")
    elif command == "keys":
        names = {u.id: u.name for u in accounts.list_users(session)}
        user_id = accounts.find_user(session, args.user).id if args.user else None
        for k in accounts.list_keys(session, user_id=user_id):
            sys.stdout.write(f"{k.id}\t{names.get(k.user_id, k.user_id)}\tsd_{k.prefix}…\t{_when(k.created_at)}\t"
                             f"{_when(k.last_used_at)}\t{'revoked ' + _when(k.revoked_at) if k.revoked_at else '-'}\n")
    elif command == "add-key":
        key, plaintext = accounts.add_key(session, user_id=accounts.find_user(session, args.user).id)
        sys.stderr.write(f"new key {key.id}; shown once:\n")
        sys.stdout.write(f"{plaintext}\n")
    elif command == "revoke-key":
        accounts.revoke_key(session, key_id=args.key_id)
        sys.stderr.write(f"revoked key {args.key_id} (and its browser sessions)\n")
    elif command == "rotate-key":
        key, plaintext = accounts.rotate_key(session, key_id=args.key_id)
        sys.stderr.write(f"key {args.key_id} revoked; new key {key.id}, shown once:\n")
        sys.stdout.write(f"{plaintext}\n")
    elif command in ("disable", "enable"):
        user = accounts.set_disabled(session, user_id=accounts.find_user(session, args.user).id,
                                     disabled=command == "disable")
        sys.stderr.write(f"user {user.name} {command}d\n")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    from storage import accounts
    from storage.db import make_engine, make_sessionmaker
    from storage.settings import get_settings

    get_settings.cache_clear()
    engine = make_engine(existing_database(get_settings()))
    try:
        with make_sessionmaker(engine)() as session:
            try:
                return _run(session, args)
            except (accounts.AccountError, accounts.BadUserName) as exc:
                sys.stderr.write(f"styledrop users {args.users_command}: {exc}\n")
                return 1
    finally:
        engine.dispose()


def add_users_commands(sub: Any) -> None:
    """The `users` command group on the top-level subparsers `sub`."""
    users = sub.add_parser("users", help="manage users and API keys")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    create = users_sub.add_parser("create", help="create a user and print its API key once")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true")
    users_sub.add_parser("list", help="list users")
    keys = users_sub.add_parser("keys", help="list API keys (never their secrets)")
    keys.add_argument("user", nargs="?", help="only this user's keys (name or id)")
    users_sub.add_parser("add-key", help="a new key for USER, printed once").add_argument("user")
    users_sub.add_parser("revoke-key", help="revoke a key and end its browser sessions").add_argument("key_id")
    users_sub.add_parser("rotate-key", help="a new key for the same user; the old one is revoked").add_argument(
        "key_id")
    users_sub.add_parser("disable", help="the user's keys and sessions stop working").add_argument("user")
    users_sub.add_parser("enable", help="undo disable").add_argument("user")
    users.set_defaults(func=cmd_users)
