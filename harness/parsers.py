"""The command line's grammar: one parser with a subcommand per command, and its error format.

``python -m harness COMMAND [options]``; without a COMMAND (the first argument an option, or none at
all) the command is ``run``, so the README's ``python -m harness --model mem --exit 5 --bw 10mbit``
is ``python -m harness run --model mem --exit 5 --bw 10mbit``. ``train`` and ``calibrate`` are listed here
but parsed by ``models.train`` and ``models.calibration`` (the same programs as ``python -m models.…``).

Errors of argparse itself are one ``error: …`` line and one line saying where the help is, exit code 2,
as every other user error of the harness; a negative link value written with a space (``--bw -5mbit``)
reaches the option's validator, which says what is wrong with it, instead of argparse taking it for an
unknown option.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from contract.cli import Parser
from contract.names import DEFAULT_DATASET, ISOLATIONS, LOCAL_EXITS, MODEL_KINDS

from .busy import DEFAULT_BUSY_RETRIES, DEFAULT_MAX_OTHER_CPU
from .placement import PLACEMENTS

PROG = "python -m harness"
#: When --exit is left out: the README's experiment uses MEM at exit 5.
DEFAULT_MEM_EXIT = 5
DEFAULT_SWEEP_MODELS = "sem,mem"
#: Blocks of ``reproduce``: the reports judge a claim from at least 5 blocks, and 5 blocks of the
#: paper's grid fit in 20 minutes on a 2-core machine (bench/bench_study.py).
REPRODUCE_BLOCKS = 5
#: What comes before the command name rather than select ``run``: the top level's own options.
TOP_LEVEL_OPTIONS = ("-h", "--help", "--version")
#: A value that argparse would take for an option because it starts with "-" and is not a plain
#: negative number (which argparse accepts): a negative quantity such as -5mbit, -5ms, -1% or -.5.
_NEGATIVE_VALUE_RE = re.compile(r"-\.?[0-9]")


def join_negative_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--bw -5mbit`` → ``--bw=-5mbit`` for the long options of ``parser`` that take a value.

    argparse reads ``-5mbit`` as an option of its own and fails with "expected one argument"; joined,
    the value reaches the option's validator, which says what is wrong with it. Only values that start
    like a negative quantity are joined, so ``--bw --delay 5ms`` still reports the missing value.
    """
    takes_value = {
        option
        for action in parser._actions
        if action.nargs is None
        for option in action.option_strings
        if option.startswith("--")
    }
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg in takes_value and i + 1 < len(argv) and _NEGATIVE_VALUE_RE.match(argv[i + 1]):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def package_version() -> str:
    """The installed ``localexit`` distribution's version (pyproject.toml's)."""
    try:
        return importlib.metadata.version("localexit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _ports(text: str) -> tuple[int, int]:
    try:
        cloud, edge = (int(p) for p in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--ports needs CLOUD,EDGE (two port numbers), got {text!r}"
        ) from exc
    return cloud, edge


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def exit_list(text: str) -> tuple[int, ...]:
    """``1-8`` or ``1,3,5`` (an argparse type: a malformed list is ``ArgumentTypeError``)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-"))
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected exits like 1-8 or 1,3,5, got {text!r}") from exc
    return tuple(out)


def add_run_options(parser: argparse.ArgumentParser, *, grid: bool = False, blocks: int = 1) -> None:
    """Options of one experiment (shared by run, record-baseline, sweep and reproduce).

    ``grid``: the model, exit and threshold come from the sweep's grid, so ``--model``, ``--exit`` and
    ``--threshold`` are hidden and absent from the parsed namespace unless given, for the command to
    refuse them rather than ignore them; ``--repeat`` is then the study's number of blocks (default
    ``blocks``).
    """
    g = parser.add_argument_group("experiment")
    if grid:
        for option in ("--model", "--exit", "--threshold"):
            g.add_argument(option, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    else:
        g.add_argument("--model", choices=MODEL_KINDS, default="mem", help="model family (default mem)")
        g.add_argument(
            "--exit",
            type=int,
            metavar="K",
            default=None,
            help=f"local exit k in 1..{LOCAL_EXITS[-1]} (sem, mem; default {DEFAULT_MEM_EXIT} for mem); "
            "none for standard",
        )
        g.add_argument(
            "--threshold",
            type=float,
            metavar="T",
            default=None,
            help="normalized-entropy threshold T (default 0.3)",
        )
    g.add_argument("--batch-size", type=int, metavar="N", default=32, help="images per batch (default 32)")
    g.add_argument(
        "--samples",
        type=int,
        metavar="N",
        default=None,
        help="test images to measure (default: the whole test set)",
    )
    if grid:
        g.add_argument(
            "--repeat",
            type=int,
            metavar="N",
            default=blocks,
            help=f"blocks: each runs every point once, in a random order of its own (default {blocks})",
        )
    else:
        g.add_argument(
            "--repeat",
            type=int,
            metavar="N",
            default=1,
            help="independent runs with fresh processes (default 1)",
        )
    g.add_argument(
        "--warmup-batches",
        type=int,
        metavar="N",
        default=2,
        help="warm-up batches, excluded from the figures (default 2)",
    )
    # The name the test node uses too; --warmup, its former name here, still works.
    g.add_argument(
        "--warmup", dest="warmup_batches", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    g.add_argument(
        "--inflight", type=int, metavar="N", default=1, help="batches in flight at once (default 1)"
    )
    g.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        metavar="NAME",
        help="fashion-mnist (default), cifar10 or synthetic",
    )
    g.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=None,
        help="dataset directory (default for fashion-mnist: /usr/share/datasets/fashion-mnist)",
    )
    g.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        default=None,
        help="model checkpoint (default: the shipped one)",
    )
    g.add_argument(
        "--model-spec",
        metavar="MODULE:FACTORY",
        default=None,
        help="your own multi-exit model: the factory that builds it (docs/models.md); needs --checkpoint",
    )
    g.add_argument(
        "--edge-device",
        metavar="DEV",
        default="cpu",
        help="where the edge runs its part: cpu (default), cuda or cuda:N",
    )
    g.add_argument(
        "--cloud-device",
        metavar="DEV",
        default="cpu",
        help="where the cloud runs its part: cpu (default), cuda or cuda:N",
    )
    g.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the sample order (default 0)")
    # (argparse %-formats help strings, hence 0.5%% there, but not group titles)
    link = parser.add_argument_group("edge–cloud link (tc units: 10mbit, 20ms, 0.5%)")
    rate_help = "rate, e.g. 10mbit (default: unshaped)"
    if grid:
        rate_help = (
            "rate, or a comma-separated list of rates to sweep, e.g. 10mbit,unshaped (default: unshaped)"
        )
    link.add_argument("--bw", default=None, metavar="RATE", help=rate_help)
    link.add_argument(
        "--delay", default=None, metavar="TIME", help="one-way delay, e.g. 20ms (default: none)"
    )
    link.add_argument("--jitter", default=None, metavar="TIME", help="delay jitter, e.g. 2ms (default: none)")
    link.add_argument(
        "--loss", default=None, metavar="PERCENT", help="packet loss, e.g. 0.5%% (default: none)"
    )
    tlink = parser.add_argument_group("test–edge link (same units; default: unshaped)")
    tlink.add_argument(
        "--test-bw", default=None, metavar="RATE", help="rate of the test–edge link, e.g. 100mbit"
    )
    tlink.add_argument(
        "--test-delay", default=None, metavar="TIME", help="one-way delay of the test–edge link, e.g. 5ms"
    )
    tlink.add_argument(
        "--test-jitter", default=None, metavar="TIME", help="delay jitter of the test–edge link, e.g. 1ms"
    )
    tlink.add_argument(
        "--test-loss", default=None, metavar="PERCENT", help="packet loss of the test–edge link, e.g. 0.1%%"
    )
    env = parser.add_argument_group("testbed")
    env.add_argument(
        "--edge-cpus",
        default=None,
        metavar="CORES",
        help="edge CPU quota in cores, e.g. 0.5 (at most the CPUs this machine gives us)",
    )
    env.add_argument("--edge-cpuset", default=None, metavar="CPUS", help="edge CPU set, e.g. 0")
    env.add_argument("--edge-mem", default=None, metavar="SIZE", help="edge memory limit, e.g. 256m")
    env.add_argument(
        "--cloud-cpuset",
        default=None,
        metavar="CPUS",
        help="CPUs the cloud node runs on, e.g. 2-3 (keep it off the edge's; default: any)",
    )
    env.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="auto",
        help="CPUs of the nodes: disjoint (the test node one CPU, the edge and the cloud half of the rest "
        "each, a torch thread per CPU), shared (every node any CPU), or auto (disjoint from 3 usable CPUs "
        "on) (default auto; --edge-cpuset, --cloud-cpuset and OMP_NUM_THREADS still win)",
    )
    env.add_argument(
        "--max-other-cpu",
        type=float,
        metavar="PCT",
        default=DEFAULT_MAX_OTHER_CPU,
        help="CPU %% other programs may use during a run (100 = one core) before it is run again "
        f"(default {DEFAULT_MAX_OTHER_CPU:g})",
    )
    env.add_argument(
        "--busy-retries",
        type=int,
        metavar="N",
        default=DEFAULT_BUSY_RETRIES,
        help="times a run over --max-other-cpu is run again; the last one is kept, marked busy "
        f"(default {DEFAULT_BUSY_RETRIES})",
    )
    env.add_argument(
        "--tcp-cc",
        default=None,
        metavar="NAME",
        help="TCP congestion control of the nodes' connections, e.g. cubic or bbr, set in their "
        "namespaces (root; default: the kernel's, recorded either way)",
    )
    env.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default="auto",
        help="netns (root), loopback, docker (root: each node in a container of the image that "
        "deploy/setup-docker.sh builds), or auto (netns when root) (default auto)",
    )
    env.add_argument(
        "--allow-unshaped",
        action="store_true",
        help="run even when a requested link or edge setting cannot be applied (not root)",
    )
    env.add_argument(
        "--ports",
        type=_ports,
        metavar="CLOUD,EDGE",
        default=None,
        help="CLOUD,EDGE listening ports (default: chosen)",
    )
    env.add_argument(
        "--ready-timeout",
        type=float,
        metavar="S",
        default=60.0,
        help="seconds a node gets to be ready (default 60)",
    )
    env.add_argument(
        "--run-timeout", type=float, metavar="S", default=3600.0, help="seconds a run may take (default 3600)"
    )
    env.add_argument("--no-calibration", action="store_true", help="skip the CPU calibration workload")
    env.add_argument(
        "--strict-clocks",
        action="store_true",
        help="fail a run (exit code 1, like a failed node) when a node's clock offset is not known to "
        "within 10%% of a procedure it corrects; without it the summary warns (nodes on the test "
        "node's clock, as on one host, always pass)",
    )


def _hosts_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hosts",
        type=Path,
        default=None,
        metavar="FILE",
        help="run the nodes on the machines a hosts file names, reached over ssh (docs/hosts.md)",
    )


def _verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the harness does")


def add_schedule_options(parser: argparse.ArgumentParser) -> None:
    """Changes of the edge–cloud link and the edge's CPU quota during a run (``netem.schedule``)."""
    g = parser.add_argument_group("changes during the run (time 0: the test node's start; root)")
    g.add_argument(
        "--link-schedule",
        default=None,
        metavar="SPEC_OR_FILE",
        help="the edge–cloud link over time, inline as TIME:RATE[/DELAY[~JITTER][/LOSS]] steps, e.g. "
        "0s:10mbit/5ms,20s:1mbit/40ms~5ms/1%%,40s:10mbit/5ms, or a TOML file of [[link]] steps or a "
        "Mahimahi [trace] (docs/netem.md); its first step replaces --bw, --delay, --jitter and --loss",
    )
    g.add_argument(
        "--cpu-schedule",
        default=None,
        metavar="SPEC",
        help="the edge's CPU quota over time in cores, e.g. 0s:2,30s:0.5; its first step replaces "
        "--edge-cpus",
    )


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    """How the multi-exit model's edge picks each batch's exit (``nodes.policy``, docs/adapt.md)."""
    g = parser.add_argument_group("exit policy (mem only)")
    g.add_argument(
        "--exit-policy",
        choices=("fixed", "adaptive", "oracle"),
        default="fixed",
        help="fixed: --exit for every batch (default); adaptive: the exit of least expected latency for "
        "the link the edge estimates; oracle: the best exit for the scheduled link (needs --link-schedule)",
    )
    g.add_argument(
        "--latency-slo",
        type=float,
        default=None,
        metavar="MS",
        help="with adaptive/oracle: the most accurate exit expected to keep per-sample latency ≤ MS "
        "(needs --profile)",
    )
    g.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="per-exit costs written by `python -m harness profile` (default: measured on the first batch)",
    )


def configure_run(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    add_schedule_options(parser)
    add_policy_options(parser)
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="FILE",
        help="each exit's threshold (and temperature) from `harness calibrate`'s file for the checkpoint, "
        "instead of --threshold (docs/harness.md)",
    )
    _hosts_option(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="results file (default: results/<point>-<time>.json)",
    )
    _verbose(parser)


def configure_record_baseline(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    add_schedule_options(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("baseline.json"),
        metavar="FILE",
        help="baseline file (default baseline.json)",
    )
    _verbose(parser)


def configure_check(parser: argparse.ArgumentParser) -> None:
    from . import check

    parser.add_argument("--baseline", type=Path, required=True, help="baseline results file")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="compare this results file (default: run the baseline's configuration now)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=check.DEFAULT_TOLERANCE,
        help="relative slow-down tolerated (default 0.10 = 10%%)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=check.DEFAULT_ALPHA,
        help="the run-level interval of current / baseline is the two-sided 1 − ALPHA one (default 0.05)",
    )
    parser.add_argument(
        "--min-samples",
        type=int,
        default=check.DEFAULT_MIN_SAMPLES,
        help="fewer batches than this on a side give 'inconclusive' (default 8)",
    )
    parser.add_argument(
        "--min-delta-ms",
        type=float,
        default=check.DEFAULT_MIN_DELTA_MS,
        help="a change of the median must also exceed this many ms to count (default 0.5)",
    )
    parser.add_argument("--no-calibration", action="store_true", help="compare raw latencies")
    parser.add_argument(
        "--busy-limit",
        type=float,
        default=check.DEFAULT_BUSY_LIMIT,
        help="CPU %% used by other programs (100 = one core) above which a run's machine "
        "counts as busy and its regressions as inconclusive (default 50)",
    )
    parser.add_argument(
        "--confirm",
        type=int,
        default=1,
        metavar="N",
        help="when the check runs the configuration itself, re-run it up to N more times; a regression "
        "(or improvement) stands only if every re-run shows it too (default 1; 0 = no re-run)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the fresh run's results here (the first run's)"
    )
    _verbose(parser)


def _grid_options(parser: argparse.ArgumentParser, out_dir_help: str, *, blocks: int = 1) -> None:
    add_run_options(parser, grid=True, blocks=blocks)
    parser.add_argument("--out-dir", type=Path, default=None, help=out_dir_help)
    parser.add_argument(
        "--order-seed",
        type=int,
        metavar="N",
        default=0,
        help="seed of the blocks' random order, recorded with the results (default 0; --seed is the "
        "samples' order)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the points, which are done already, and the estimated time; run nothing",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _hosts_option(parser)
    _verbose(parser)


def configure_sweep(parser: argparse.ArgumentParser) -> None:
    _grid_options(parser, "where the results go (default results/sweep)")
    grid = parser.add_argument_group("grid (every combination is a point)")
    grid.add_argument(
        "--grid",
        choices=("paper",),
        default=None,
        help="paper: SEM-1…8 and MEM at exits 1…8, T in {0.1, 0.3, 0.5, 0.8} (then leave out "
        "--models, --exits and --thresholds)",
    )
    # (absent unless given, so that --grid paper can refuse them rather than ignore them)
    grid.add_argument(
        "--models", default=argparse.SUPPRESS, help=f"comma-separated (default {DEFAULT_SWEEP_MODELS})"
    )
    grid.add_argument(
        "--exits",
        type=exit_list,
        default=argparse.SUPPRESS,
        help="local exits, e.g. 1-4 or 1,3,5 (default 1-8)",
    )
    grid.add_argument(
        "--thresholds",
        type=_floats,
        default=argparse.SUPPRESS,
        help="comma-separated, e.g. 0.1,0.3 (default 0.1,0.3,0.5,0.8)",
    )


def configure_reproduce(parser: argparse.ArgumentParser) -> None:
    _grid_options(
        parser,
        "where the results go (default results/reproduce, or results/reproduce-quick with --quick)",
        blocks=REPRODUCE_BLOCKS,
    )
    parser.add_argument(
        "--quick", action="store_true", help="320 samples per point instead of the whole test set"
    )
    parser.add_argument("--report-dir", type=Path, default=None, help="default: <out-dir>/report")


def configure_clean(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix",
        default="lx",
        help="prefix of the run objects to remove (default lx: every run, and the node-log folders)",
    )
    parser.add_argument(
        "--force", action="store_true", help="also remove runs whose owning process is still alive"
    )
    parser.add_argument(
        "--hosts",
        type=Path,
        default=None,
        metavar="FILE",
        help="also on every host of this hosts file: nodes still running, qdiscs, run folders",
    )
    _verbose(parser)


#: (name, one line for the command list, description, how its options are added). ``train``'s options
#: are ``models.train``'s: it has none here.
COMMANDS: tuple[tuple[str, str, str, Callable[[argparse.ArgumentParser], None] | None], ...] = (
    (
        "run",
        "run one experiment and print its summary (the default command)",
        "Run one local-exit experiment and print its summary. Also without the word run: "
        f"{PROG} --model mem --exit 5 --bw 10mbit",
        configure_run,
    ),
    (
        "sweep",
        "run models × exits × thresholds × links, one results file per point",
        "Run models × exits × thresholds × links, one results file per point: --repeat N blocks, each "
        "every point once in a random order, on nodes reconfigured between runs; re-running resumes.",
        configure_sweep,
    ),
    (
        "reproduce",
        "run the paper's grid and build the report",
        "Run the paper's grid (SEM-1…8 and MEM at exits 1…8, T in {0.1, 0.3, 0.5, 0.8}) in "
        f"{REPRODUCE_BLOCKS} blocks (--repeat), each in a random order, and build the report. Other grids: "
        f"{PROG} sweep.",
        configure_reproduce,
    ),
    (
        "check",
        "compare latencies against a baseline (exit 1 on a regression)",
        "Compare latencies against a baseline. Exit code 0: no regression (pass, improvement or "
        "inconclusive); 1: regression; 2: unusable input.",
        configure_check,
    ),
    (
        "record-baseline",
        "run an experiment and keep it as the baseline of check",
        f"Run an experiment and keep its results as the baseline of `{PROG} check`.",
        configure_record_baseline,
    ),
    (
        "clean",
        "remove what killed runs left behind",
        "Remove the namespaces, links, qdiscs, cgroups, helper processes and node-log folders left by "
        "killed runs (by the run prefix and the owner each run records).",
        configure_clean,
    ),
    (
        "train",
        "train a model (options: train --help)",
        "Train a local-exit model.",
        None,
    ),
    (
        "calibrate",
        "choose each exit's threshold for a target accuracy (options: calibrate --help)",
        "From a validation split held out of the training set, the largest threshold per exit that keeps "
        "the local exits' accuracy at or above a target.",
        None,
    ),
    (
        "profile",
        "measure each exit's costs for an exit policy (options: profile --help)",
        "Per exit of a multi-exit checkpoint: edge and cloud compute time, feature bytes, local-exit rate "
        "and accuracy, written as the profile file an adaptive edge reads (--profile).",
        None,
    ),
    (
        "adapt",
        "compare fixed exits, the adaptive MEM and the oracle under a link schedule (options: adapt --help)",
        "Every fixed SEM-k, the MEM at every fixed exit, the adaptive MEM and the oracle, interleaved in "
        "blocks under one link schedule; a table with intervals and a figure of the exit chosen over time.",
        None,
    ),
)
SUBCOMMANDS = tuple(name for name, *_ in COMMANDS)


def build_parser() -> tuple[Parser, dict[str, Parser]]:
    """The top-level parser, and each command's parser by name."""
    parser = Parser(
        prog=PROG,
        description="Benchmark early-exit ('local exit') DNN inference split between an edge and a cloud\n"
        "node: three processes in network namespaces, the links shaped with tc.",
        epilog=f"Without a COMMAND the command is run:\n  {PROG} --model mem --exit 5 --bw 10mbit\n"
        f"A command's options: {PROG} COMMAND --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s (localexit) {package_version()}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", title="commands", required=True, parser_class=Parser
    )
    commands: dict[str, Parser] = {}
    for name, summary, description, configure in COMMANDS:
        command = sub.add_parser(name, help=summary, description=description, add_help=configure is not None)
        if configure is not None:
            configure(command)
        commands[name] = command
    return parser, commands


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line other than ``train``'s (see :func:`command_of`)."""
    parser, commands = build_parser()
    argv = with_command(argv)
    if argv[0] in commands:
        argv = [argv[0], *join_negative_values(argv[1:], commands[argv[0]])]
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # (said by the command's parser, so that the hint names the command's help)
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def with_command(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``run`` put first when it names no command (no arguments, or an option first)."""
    args = list(argv)
    if not args or (args[0].startswith("-") and args[0] not in TOP_LEVEL_OPTIONS):
        return ["run", *args]
    return args
