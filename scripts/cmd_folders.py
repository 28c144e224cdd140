"""`netkv plot` and `netkv compare`: redraw a result folder's figures, compare two folders."""
from __future__ import annotations

import argparse
from pathlib import Path

from scheduler.paths import RESULTS_DIR
from scripts.cli_common import EXIT_OK, add_command, add_format_option, check_out, provenance

COMMAND_HELP: dict[str, tuple[str, list[str]]] = {
    "plot": ("Redraw every figure of a simulate or emulate result folder from its\n"
             "summary.json and requests.csv (and link_utilisation.csv), in any format;\n"
             "by default into the folder itself, each figure replaced by a rename.",
             ["netkv simulate --scenario decode-flap --max-requests 300 --out results/flap",
              "netkv plot results/flap --format pdf               # PDF figures beside the PNGs",
              "netkv plot results/flap --format svg --out figs    # SVG figures into figs/"]),
    "compare": ("Compare two simulate/emulate result folders (any scenarios): for every\n"
                "policy present in both, mean TTFT, p99 TTFT, SLO attainment and mean TBT\n"
                "of A and B and the change B - A, absolute and in %. Writes compare.json,\n"
                "compare.txt and an overlaid TTFT CDF (A solid, B dashed) as a new folder.",
                ["netkv simulate --scenario idle --max-requests 300 --out results/idle",
                 "netkv simulate --scenario decode-flap --max-requests 300 --out results/flap",
                 "netkv compare results/idle results/flap --out results/idle-vs-flap"]),
}
"""Per subcommand: a description and examples for its --help (defaults are shown per option)."""


def register(sub) -> None:
    """Add ``plot`` and ``compare`` to the ``netkv`` subparsers ``sub``."""
    p = add_command(sub, "plot", *COMMAND_HELP["plot"], help="redraw every figure of a simulate/emulate result folder")
    p.add_argument("dir", metavar="DIR", help="result folder")
    add_format_option(p)
    p.add_argument("--out", metavar="DIR2", help="write the figures here instead (created if missing)")
    p.set_defaults(func=cmd_plot)
    p = add_command(sub, "compare", *COMMAND_HELP["compare"],
                    help="compare two result folders: per-policy changes and an overlaid TTFT CDF")
    p.add_argument("dir_a", metavar="DIR_A", help="result folder A (the reference)")
    p.add_argument("dir_b", metavar="DIR_B", help="result folder B")
    p.add_argument("--out", metavar="DIR", help="new folder for the comparison (default: results/<timestamp>-compare)")
    add_format_option(p)
    p.set_defaults(func=cmd_compare)


def cmd_plot(args: argparse.Namespace) -> int:
    from scheduler.results.replot import replot

    out = Path(args.out) if args.out else None
    if out is not None:
        check_out(out, existing_ok=True)
    dest, texts = replot(Path(args.dir), args.format, out)
    for name, text in texts.items():
        print(f"{dest / name}: {text.title}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from scheduler.results.replot import default_compare_out, run_compare

    out = Path(args.out) if args.out else default_compare_out(RESULTS_DIR)
    check_out(out)
    path, text, _ = run_compare(Path(args.dir_a), Path(args.dir_b), out, args.format, provenance(args))
    print(text)
    print(f"results: {path}")
    return EXIT_OK
