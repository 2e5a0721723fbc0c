"""``varrt cache list|du|clean``: what the export cache holds, what it takes on disk, and removing it.

Listings go to stdout (tables, or JSON with ``--json``); what ``clean`` removes is reported on stderr."""

from __future__ import annotations

import argparse

from varrt.runtime import console as con


def cmd_cache(args: argparse.Namespace) -> int:
    from varrt.export.artifact import cache_dir
    from varrt.runtime.cache import age, clean, entries, mib, usage, users

    if args.older_than is not None and args.action != "clean":
        raise ValueError(f"--older-than is an option of `varrt cache clean`, not of `varrt cache {args.action}`")
    root = cache_dir()
    if args.action == "list":
        found = entries(root)
        listed = [
            {
                "kind": e.kind,
                "name": e.name,
                "path": str(e.path),
                "model": e.label,
                "what": e.detail,
                "created": age(e.created),
                **({"used_by": len(users(e, found))} if e.kind == "pack" else {}),
            }
            for e in found
        ]
        if args.json:
            con.print_json({"cache": str(root), "entries": listed})
            return 0
        rows = [
            [x["kind"], x["name"], x["model"], x["what"] + (f"; used by {x['used_by']}" if "used_by" in x else ""),
             x["created"]]
            for x in listed
        ]  # fmt: skip
        con.result(con.table(f"{root}: {len(found)} entries", ["kind", "name", "model", "what", "created"], rows))
    elif args.action == "du":
        u = usage(root)
        if args.json:
            rows = [{"what": kind, "count": n, "bytes": b, "note": note} for kind, n, b, note in u.rows]
            con.print_json({"cache": str(root), "rows": rows, "total_bytes": u.total})
            return 0
        rows = [[kind, str(n), mib(b), note] for kind, n, b, note in u.rows]
        rows.append(["total", "", mib(u.total), "every file counted once (hard links too)"])
        con.result(con.table(f"{root}: disk use", ["what", "count", "size", ""], rows))
    else:
        if args.older_than is not None and not args.older_than >= 0:  # NaN too
            raise ValueError(f"--older-than takes days >= 0, got {args.older_than}")
        removed: list[str] = []
        freed = clean(args.older_than, root, say=lambda m: (removed.append(m), con.info(m)))
        if args.json:
            con.print_json({"cache": str(root), "freed_bytes": freed, "removed": removed})
        else:
            con.info(f"freed {mib(freed)} in {root}")
    return 0


def add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="the export cache ($VARRT_CACHE): list, disk use (du), clean")
    p.add_argument("action", choices=["list", "du", "clean"])
    p.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="clean: only artifacts not created or reused for DAYS days (default: all)",
    )
    p.add_argument("--json", action="store_true", help="print it as JSON (stdout) instead of tables")
    p.set_defaults(func=cmd_cache)
