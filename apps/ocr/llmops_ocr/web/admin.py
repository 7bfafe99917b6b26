"""Web user administration for deploy roles and operators.

    python -m llmops_ocr.web.admin ensure-admin [--config FILE] [--migrate]
        create the user ``admin`` with the ``admin-password`` credential unless it exists
        (prints "created" or "unchanged", for Ansible's changed_when)
    python -m llmops_ocr.web.admin create-user NAME [--admin]   (password on stdin)
    python -m llmops_ocr.web.admin set-password NAME            (password on stdin)

The database comes from the web config (``$LLMOPS_CONFIG`` or /etc/llmops/web.json) and its
password from ``$CREDENTIALS_DIRECTORY/db-password``. Exit status: 0 done, 1 refused, 2 bad config.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from llmops_ocr.config import ConfigError, load_config, read_credential
from llmops_ocr.db import (
    make_engine,
    make_sessionmaker,
    migrate,
    session_scope,
    store,
    url_from_config,
)

MIN_PASSWORD_LENGTH = 8


def _password_from_stdin() -> str:
    pw = sys.stdin.readline().rstrip("\r\n")
    if len(pw) < MIN_PASSWORD_LENGTH:
        raise ConfigError(
            f"the password (read from stdin) must have at least {MIN_PASSWORD_LENGTH} characters"
        )
    return pw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m llmops_ocr.web.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--config", help="web config JSON (default $LLMOPS_CONFIG or /etc/llmops/web.json)"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    ea = sub.add_parser(
        "ensure-admin", help="create the admin user from the admin-password credential"
    )
    ea.add_argument("--migrate", action="store_true", help="upgrade the schema first")
    cu = sub.add_parser("create-user", help="add a user; password on stdin")
    cu.add_argument("name")
    cu.add_argument("--admin", action="store_true")
    sp = sub.add_parser("set-password", help="change a user's password; password on stdin")
    sp.add_argument("name")
    args = ap.parse_args(argv)

    try:
        url = url_from_config(load_config("web", args.config))
        if getattr(args, "migrate", False):
            migrate(url)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        try:
            with session_scope(sessions) as s:
                if args.cmd == "ensure-admin":
                    password = read_credential("admin-password")
                    assert password is not None
                    print("created" if store.ensure_admin(s, password) else "unchanged")
                elif args.cmd == "create-user":
                    store.create_user(s, args.name, _password_from_stdin(), is_admin=args.admin)
                    print(f"created user {args.name}")
                else:
                    user = store.get_user(s, args.name)
                    if user is None:
                        print(f"admin: no user named {args.name!r}", file=sys.stderr)
                        return 1
                    store.set_password(s, user, _password_from_stdin())
                    print(f"password of {args.name} changed")
        finally:
            engine.dispose()
    except ConfigError as exc:
        print(f"admin: {exc}", file=sys.stderr)
        return 2
    except IntegrityError:
        print(f"admin: a user named {args.name!r} exists already", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(
            f"admin: database error: {str(exc).splitlines()[0]}; is the schema migrated "
            "(python -m llmops_ocr.db.migrate --type web) and the database reachable?",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
