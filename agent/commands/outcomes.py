"""``hyperct-agent outcomes import|match``: echocardiogram results in, matched to CTs.

``import FILE.csv`` reads an echo reporting system's export (columns in
:mod:`agent.outcomes.csv_rows` and the README), pseudonymises each identifier as it
is read, labels the seven echo tasks and matches each echo to the patient's screened
CT closest in time (:mod:`storage.outcomes`). Importing a file again changes nothing.
``match`` runs the matching again for the outcomes still without a CT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.commands import args as args_
from agent.errors import AgentError

#: Rows committed together: a failure part-way keeps what was committed; importing the
#: file again then adds the rest (the rows already in are duplicates).
BATCH_ROWS = 500
#: Rejected rows listed one by one before only their count goes on.
MAX_LISTED_ERRORS = 50


def register(sub: Any) -> None:
    p = sub.add_parser("outcomes", help="echocardiogram results: import, match to screened CTs")
    osub = p.add_subparsers(dest="outcomes_command", metavar="ACTION")
    osub.required = True
    imp = osub.add_parser(
        "import",
        help="import an echo export (CSV) and match each echo to a screened CT",
        description="Columns: patient_id [issuer] and/or accession, exam_date, [sex], "
        "lvef_percent, lvidd_cm, lavi_ml_m2, tr_velocity_m_s, pasp_mmhg, e_a_ratio, "
        "rv_function. Identifiers are pseudonymised at once and never stored or shown.",
    )
    imp.add_argument("file", type=args_.path, help="CSV file (comma, semicolon or tab separated)")
    imp.add_argument("--encoding", default="utf-8-sig", help="file encoding (default UTF-8)")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.set_defaults(func=run_import)
    match = osub.add_parser("match", help="match outcomes still without a CT again")
    match.add_argument(
        "--all", action="store_true", help="re-match every outcome, matched ones too"
    )
    match.set_defaults(func=run_match)
    for parser in (imp, match):
        parser.add_argument(
            "--config", type=args_.path, help="agent.toml (default: the embedded defaults)"
        )


def _read_text(path: Path, encoding: str) -> str:
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError:
        raise AgentError(f"{path}: not {encoding} text (try --encoding cp1252)") from None
    except (LookupError, ValueError):  # ValueError: a name no codec can have ("a\x00")
        raise AgentError(f"unknown encoding {encoding[:40]!r}") from None
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc.strerror or exc}") from None


def run_import(args: argparse.Namespace) -> int:
    import io

    from tqdm import tqdm

    from agent.logs import get_logger
    from agent.outcomes.csv_rows import RowError, open_rows, outcome_from_row
    from agent.pseudonym import load_pseudonymizer
    from agent.runtime import open_runtime
    from storage.audit import audit
    from storage.outcomes import OutcomeWrite, record_outcome

    text = _read_text(args.file, args.encoding)
    layout, rows = open_rows(io.StringIO(text, newline=""))
    runtime = open_runtime(args.config, migrate=False, check_files=False)
    log = get_logger("agent.outcomes")
    settings = runtime.settings
    counts = dict.fromkeys(("imported", "updated", "duplicates", "rejected"), 0)
    matched = unmatched = 0
    listed = 0
    try:
        pseudonyms = load_pseudonymizer(settings.patients.pseudonym_key, settings.storage.root)
        total = sum(1 for line in text.splitlines()[1:] if line.strip())
        bar = tqdm(
            total=total, unit="row", desc="outcomes", disable=True if args.no_progress else None
        )
        session = runtime.sessions()
        try:
            for done, (number, cells) in enumerate(rows, start=1):
                bar.update(1)
                try:
                    record = outcome_from_row(number, cells, layout, pseudonyms)
                except RowError as exc:
                    counts["rejected"] += 1
                    if listed < MAX_LISTED_ERRORS:
                        bar.write(f"rejected {exc}", file=sys.stderr)
                        listed += 1
                    continue
                result = record_outcome(session, record, settings.outcomes.match_days)
                key = {
                    OutcomeWrite.IMPORTED: "imported",
                    OutcomeWrite.UPDATED: "updated",
                    OutcomeWrite.DUPLICATE: "duplicates",
                }[result.write]
                counts[key] += 1
                if result.job_id is None:
                    unmatched += 1
                else:
                    matched += 1
                if done % BATCH_ROWS == 0:
                    session.commit()
            audit(session, "outcomes", "imported", detail={"source": "csv", **counts})
            session.commit()
        finally:
            session.close()
            bar.close()
    finally:
        runtime.close()
    if counts["rejected"] > listed:
        print(f"... and {counts['rejected'] - listed} more rejected rows", file=sys.stderr)
    log.info("outcomes imported", **counts, matched=matched, unmatched=unmatched)
    print(
        f"imported {counts['imported']}, updated {counts['updated']}, "
        f"duplicates {counts['duplicates']}, matched {matched}, unmatched {unmatched}, "
        f"rejected {counts['rejected']}"
    )
    if layout.ignored:
        print(f"ignored columns: {', '.join(layout.ignored)}", file=sys.stderr)
    return 1 if counts["rejected"] else 0


def run_match(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage.outcomes import match_pending, outcome_counts

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions.begin() as session:
            changed = match_pending(
                session, runtime.settings.outcomes.match_days, rematch_all=args.all
            )
        with runtime.sessions() as session:
            counts = outcome_counts(session)
    finally:
        runtime.close()
    print(
        f"newly matched {changed}; outcomes {counts['outcomes']}, matched {counts['matched']}, "
        f"unmatched {counts['unmatched']}"
    )
    return 0
