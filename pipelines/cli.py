"""``gwp`` — one command, one subcommand per pipeline driver.

Each subcommand is a module ``pipelines.<name>`` exposing ``build_parser()`` and
``main(argv)``, so ``gwp generate-sim …`` and ``python -m pipelines.generate_sim …`` are the
same program. Modules are imported only when their subcommand runs, to keep start-up fast,
and each ``main`` ends through :func:`pipelines.usage.command` (a user's mistake is one line on
stderr and exit 2; ``gwp --version`` prints the installed package's version).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate-sim": ("pipelines.generate_sim", "generate Meta-World expert demonstrations (LeRobot v3.0)"),
    "ingest": ("pipelines.ingest", "read heterogeneous sources into one episode stream; count and ledger"),
    "inspect": ("pipelines.inspect", "detect a source's format, list its keys and print a starter mapping"),
    "convert": ("pipelines.convert", "write episodes of any source in another format"),
    "curate": ("pipelines.curate", "Ray Data curation: filter, caption, normalise, write shards + report"),
    "pretrain": ("pipelines.pretrain", "DeepSpeed pretraining of the action-conditioned video model"),
    "finetune": ("pipelines.finetune", "DeepSpeed fine-tuning of the GWP policy (joint action + video)"),
    "evaluate": ("pipelines.evaluate", "closed-loop evaluation in simulation, with reports"),
    "model-info": (
        "pipelines.model_info",
        "parameters, tokens, attention FLOPs and ZeRO memory of a model preset",
    ),
    "serve": ("pipelines.serve", "serve a policy to robots over openpi's websocket protocol"),
    "publish": ("pipelines.publish", "push a curated dataset or a saved model folder to the Hub"),
    "demo": ("pipelines.demo", "every stage end to end on the embedded default data"),
}


def package_version() -> str:
    try:
        return version("gigaworld-policy")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    from pipelines.usage import known

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-V"], ["--version"]):
        print(f"gwp {package_version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        parser = argparse.ArgumentParser(prog="gwp", description=__doc__.splitlines()[0])
        parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")
        for name, (_, help_text) in COMMANDS.items():
            sub.add_parser(name, help=help_text)
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        try:  # the registries' "did you mean", and the list of commands
            known("command", list(COMMANDS))(name)
        except argparse.ArgumentTypeError as err:
            print(f"gwp: error: {err}", file=sys.stderr)
            return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
