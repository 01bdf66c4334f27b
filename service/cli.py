"""The `decouple` command line (reference: ``docs/api.md``).

Each subcommand's work lives beside what it drives (`service.db`, `service.api`, `service.client`,
`workers.worker`, `workers.demo`); this module only parses arguments and turns the project's own
errors into a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.errors import CliError

__all__ = ["CliError", "build_parser", "main"]


def _cmd_migrate(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.db import get_engine, session_scope, upgrade_to_head
    from service.tokens import ensure_token

    rev = upgrade_to_head()
    print(f"database is at revision {rev}")
    # The compose stack's admin: its token was made by the `secrets` service, which cannot
    # reach the database; the migration, which runs before the API, stores it.
    path = Settings().admin_token_file
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise CliError(f"DECOUPLE_ADMIN_TOKEN_FILE: cannot read {path}: {exc.strerror}") from exc
        try:
            with session_scope(get_engine()) as session:
                added, revoked = ensure_token(session, "admin", token, admin=True, sole=True)
        except ValueError as exc:
            raise CliError(f"DECOUPLE_ADMIN_TOKEN_FILE ({path}): {exc}") from exc
        print("stored the admin token of 'admin'" if added else "the admin token of 'admin' is already stored")
        if revoked:
            print(f"revoked {revoked} earlier token(s) of 'admin': the file's token replaces them")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.api import serve

    serve(host=args.host, port=args.port)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from workers.worker import run_worker

    # A long-running service: say what it claims and finishes (stderr, with times).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("workers").setLevel(logging.INFO)
    if args.study is None:
        return run_worker(once=args.once, ray_address=args.ray_address)
    return _run_one_study(args.study, args.ray_address)


def _run_one_study(study_id: str, ray_address: str | None) -> int:
    """``decouple worker --study ID``: claim that study alone, run it, exit: 0 when it is done,
    1 when it ended otherwise (failed, or still running after the database was lost). When it
    cannot be claimed, exit 2 and say why: no such study, already finished or running elsewhere, or (queued) the
    reason the claim recorded, e.g. a plugin this machine lacks."""
    from service import store
    from service.config import get_settings
    from service.db import check_schema_current, make_engine, session_scope
    from workers.worker import installed_plugins, new_worker_id, run_worker

    engine = make_engine(get_settings().database_url)
    worker_id = new_worker_id()
    try:
        check_schema_current(engine)  # an old schema: the one-line message, not a traceback
        # What would refuse the claim is checked before Ray starts for nothing: a finished study,
        # or plugins this machine lacks (recorded on the study, as a claim that passed it over would).
        with session_scope(engine) as s:
            study = store.get_study(s, study_id)  # NotFound: "decouple: no study 'ID'"
            status = study.status
            missing = store.missing_plugins(study.plugins, installed_plugins()) if status == "queued" else None
            if missing:
                store.record_waiting(study, worker_id, missing)
                reason = study.waiting_reason
        if status in ("done", "failed", "cancelled"):
            raise CliError(f"study {study_id} was not claimed, it is {status}")
        if missing:
            raise CliError(f"study {study_id} was not claimed, it is queued: {reason}")
        ran: list[str] = []
        code = run_worker(once=True, ray_address=ray_address, only=study_id, on_study_start=ran.append,
                          worker_id=worker_id)
        with session_scope(engine) as s:
            study = store.get_study(s, study_id)
            status, reason = study.status, study.waiting_reason
    finally:
        engine.dispose()
    if ran:
        print(f"study {study_id}: {status}")
        return code or (0 if status == "done" else 1)
    why = f": {reason}" if status == "queued" and reason else ""
    raise CliError(f"study {study_id} was not claimed, it is {status}{why}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from service.domain import conventions
    from workers.demo import run_demo

    names = [n.strip() for n in args.optimizers.split(",") if n.strip()] if args.optimizers else None
    for name in names or []:
        try:
            conventions.parse(name)
        except conventions.UnknownOptimizer as e:
            print(f"decouple demo: --optimizers: {e}", file=sys.stderr)
            return 2
    return run_demo(out=args.out, quick=args.quick, optimizers=names)


def _cmd_submit(args: argparse.Namespace) -> int:
    from service.client import submit

    return submit(args.spec, wait=args.wait, api_url=args.api_url, token=args.token)


def _cmd_status(args: argparse.Namespace) -> int:
    from service.client import status

    return status(args.id, api_url=args.api_url, token=args.token)


def _cmd_report(args: argparse.Namespace) -> int:
    from service.client import report

    return report(args.id, as_json=args.json, html=args.html, api_url=args.api_url, token=args.token)


def _cmd_compare(args: argparse.Namespace) -> int:
    from service.client import compare

    return compare(args.ids, as_json=args.json, html=args.html, api_url=args.api_url, token=args.token)


def _cmd_token_create(args: argparse.Namespace) -> int:
    from service.tokens import create_token_cli

    return create_token_cli(args.name, admin=args.admin)


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    from service.tokens import revoke_token_cli

    return revoke_token_cli(args.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decouple",
        description="Can the learning rate and weight decay of an optimizer be tuned separately?",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the built-in demo study end to end (SQLite + local Ray)")
    p.add_argument("--out", default="demo-report", help="folder for report.html (default ./demo-report)")
    p.add_argument("--quick", action="store_true", help="a small grid, for smoke tests")
    p.add_argument("--optimizers", default=None, metavar="NAMES",
                   help="comma-separated optimizer names (BASE or BASE:CONVENTION, e.g. "
                        "lion,adam:corrected,muon; default: the five original ones)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("serve", help="run the REST API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("migrate", help="bring the database schema to the latest revision")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("worker", help="claim queued studies and run them on Ray")
    p.add_argument("--once", action="store_true", help="exit when the queue is empty")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: RAY_ADDRESS, else a local one)")
    p.add_argument("--study", default=None, metavar="ID",
                   help="claim this study and no other, run it and exit (says why when it cannot)")
    p.set_defaults(func=_cmd_worker)

    client_args = argparse.ArgumentParser(add_help=False)
    client_args.add_argument("--api-url", default=None, help="default: DECOUPLE_API_URL")
    client_args.add_argument("--token", default=None, help="default: DECOUPLE_TOKEN")

    p = sub.add_parser("submit", parents=[client_args], help="post a JSON or YAML study spec to the API")
    p.add_argument("spec", help="path to the spec file")
    p.add_argument("--wait", action="store_true", help="show progress until done, then the table")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("status", parents=[client_args], help="a study's progress")
    p.add_argument("id")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("report", parents=[client_args], help="a study's separability report")
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="print the report JSON")
    p.add_argument("--html", default=None, metavar="FILE", help="write the report page to FILE")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", parents=[client_args], help="finished studies side by side, with differences")
    p.add_argument("ids", nargs="+", metavar="ID", help="two or more study ids; differences are against the first")
    p.add_argument("--json", action="store_true", help="print the comparison JSON")
    p.add_argument("--html", default=None, metavar="FILE", help="write the comparison page to FILE")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    t = tsub.add_parser("create", help="print a new API token once (stored hashed)")
    t.add_argument("name")
    t.add_argument("--admin", action="store_true")
    t.set_defaults(func=_cmd_token_create)
    t = tsub.add_parser("revoke", help="revoke every live token of NAME")
    t.add_argument("name")
    t.set_defaults(func=_cmd_token_revoke)
    return parser


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its subcommands' parsers."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def _join_token(argv: Sequence[str], options: set[str]) -> list[str]:
    """``--token VALUE`` as ``--token=VALUE`` when VALUE starts with ``-``: argparse takes such a
    value for an option and stops with "expected one argument". Tokens made now start with
    ``dl_``, but one in 64 of those made before (bare ``token_urlsafe``) starts with ``-`` and must
    still work. A VALUE that is one of the CLI's own options (or an abbreviation of one), or
    anything after ``--``, is left to argparse, so ``--token --wait`` still says the token is
    missing. ``--tok VALUE`` (argparse's abbreviation, when no other option starts so) is joined
    the same way."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--":
            break
        value = out[i + 1]
        own = value in options or (value.startswith("--") and any(o.startswith(value) for o in options))
        token = arg == "--token" or (len(arg) > 2 and [o for o in options if o.startswith(arg)] == ["--token"])
        if token and value.startswith("-") and value != "--" and not own:
            return out[:i] + [f"--token={value}"] + _join_token(out[i + 2:], options)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_token(sys.argv[1:] if argv is None else argv, _option_strings(parser)))
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"decouple: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # The project's own errors (database unavailable, schema out of date, ...) are for the
        # user too: one line, not a traceback.
        from service.errors import DecoupleError

        if not isinstance(exc, DecoupleError):
            raise
        print(f"decouple: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("decouple: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m service.cli`: call the imported module's main, so the CliError that handlers
    # raise (service.cli.CliError) is the class it catches, not a second __main__.CliError.
    from service.cli import main as _main

    sys.exit(_main())
