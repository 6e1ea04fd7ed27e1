"""`python -m app ...`: serve, migrate, prune, keys, audit, user and service client administration,
mail.

Each command lives in its own module, imported only when it runs: a CLI call pays for the
libraries its command uses (an account command needs no web framework, no migrations).
"""

from __future__ import annotations

import argparse
import importlib
import secrets
import sys

from pydantic import ValidationError

from app.core.errors import DomainError
from app.core.logging import configure_logging
from app.core.settings import get_settings

# command -> the module (in this package) whose run(args, settings) -> str carries it out
_MODULES = {
    "serve": "server",
    "migrate": "server",
    "prune": "server",
    "keys": "keys",
    "audit": "audit",
    "users": "users",
    "clients": "clients",
    "mail": "mail",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate, then run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (chain)")
    serve.add_argument("--ssl-keyfile", help="the PEM private key of --ssl-certfile")
    serve.add_argument(
        "--dev-tls",
        action="store_true",
        help="serve HTTPS with a self-signed certificate for localhost, 127.0.0.1 and ::1, "
        "made once under --dev-tls-dir and reused (not in production)",
    )
    serve.add_argument(
        "--dev-tls-dir", help="where --dev-tls keeps its certificate (default: data/dev-tls)"
    )

    sub.add_parser("migrate", help="apply database migrations and create a signing key")
    sub.add_parser("prune", help="delete expired/revoked sessions and old refresh tokens")
    sub.add_parser("secret", help="print a new random SECRET_KEY (needs no configuration)")

    keys_cmd = sub.add_parser("keys", help="signing keys").add_subparsers(
        dest="action", required=True
    )
    rotate_cmd = keys_cmd.add_parser(
        "rotate", help="publish a new key now; it signs after KEY_PUBLISH_DELAY"
    )
    rotate_cmd.add_argument(
        "--now", action="store_true", help="sign with it at once (emergency: a key leaked)"
    )
    keys_cmd.add_parser("list", help="keys with their state and dates")
    keys_cmd.add_parser(
        "revoke",
        help="a key leaked: it stops signing, verifying and appearing in JWKS on every replica "
        "within KEY_RELOAD_INTERVAL (a fresh key signs at once if it was signing)",
    ).add_argument("kid", help="the key's id (`keys list`, or a token's `kid` header)")

    mail_cmd = sub.add_parser("mail", help="email delivery").add_subparsers(
        dest="action", required=True
    )
    mail_cmd.add_parser(
        "test", help="send a test message now through SMTP_URL (or into MAIL_DIR)"
    ).add_argument("address", help="where to send it")

    audit_cmd = sub.add_parser("audit", help="a user's audit trail, newest first")
    audit_cmd.add_argument("user", help="email or user id")
    audit_cmd.add_argument("--limit", type=int, default=50)

    user_cmd = sub.add_parser("users", help="manage users").add_subparsers(
        dest="action", required=True
    )
    create = user_cmd.add_parser(
        "create",
        help="create a user (password from stdin or prompt)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    create.add_argument("email")
    create.add_argument("--role", default="user", help="one of ROLES; admin may use /admin")
    listing = user_cmd.add_parser(
        "list",
        help="users by email, with their id, role and state",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    listing.add_argument("--email", help="only addresses containing this text")
    listing.add_argument("--limit", type=int, default=100, help="at most this many")
    for action, text in (
        ("deactivate", "deactivate a user and revoke all their sessions"),
        ("activate", "re-activate a user"),
        ("set-password", "set a new password (stdin or prompt) and revoke all sessions"),
        ("verify", "mark a user's email address as verified (the operator vouches for it)"),
        (
            "reset-mfa",
            "remove a user's second factors (a lost app and codes, or SECRET_KEY changed); "
            "the owner is emailed",
        ),
    ):
        user_cmd.add_parser(action, help=text).add_argument("email")
    _clients_parser(sub)
    return parser


def _clients_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    clients = sub.add_parser(
        "clients", help="service clients (client_credentials grant)"
    ).add_subparsers(dest="action", required=True)
    add = clients.add_parser("add", help="register a client and print its secret once")
    add.add_argument("client_id", help="1-64 of a-z 0-9 . _ -")
    add.add_argument(
        "--audience",
        action="append",
        default=[],
        help="an audience it may ask for (repeatable); tokens always carry JWT_AUDIENCE",
    )
    add.add_argument("--scope", action="append", default=[], help="a scope it may ask for")
    clients.add_parser("list", help="clients with their audiences, scopes and state")
    rotate = clients.add_parser(
        "rotate-secret", help="print a new secret once; the old one works for --grace seconds"
    )
    rotate.add_argument("client_id")
    rotate.add_argument(
        "--grace",
        type=int,
        default=3600,
        help="seconds the current secret keeps working (0: stops now, for a leaked secret)",
    )
    for action, text in (
        ("disable", "refuse its token requests, and its live tokens from the next request on"),
        ("enable", "accept it again"),
    ):
        clients.add_parser(action, help=text).add_argument("client_id")


def parse(argv: list[str]) -> argparse.Namespace:
    # A kid is base64url, so one in 64 starts with "-", which argparse takes for an option:
    # `keys revoke -Xy...` must name the key, as `keys revoke -- -Xy...` would.
    if argv[:2] == ["keys", "revoke"] and len(argv) == 3 and argv[2] not in ("-h", "--help"):
        argv = [*argv[:2], "--", argv[2]]
    return _parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "secret":  # before the settings: the current key may be what is wrong
        print(secrets.token_urlsafe(48))
        return 0
    try:
        settings = get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            print(f"configuration error: {field}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json_output=settings.json_logs)
    command = importlib.import_module(f"app.cli.{_MODULES[args.command]}")
    try:
        output: str = command.run(args, settings)
    except DomainError as exc:
        print(f"error: {exc.detail} ({exc.code})", file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0
