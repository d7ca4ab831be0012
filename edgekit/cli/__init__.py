"""The ``edgekit`` command line: thin click commands, options → config → library call.

Subcommands live in their own modules and are imported only when used (or listed by
``--help``); those modules import click and the standard library only, so ``edgekit --help``
never loads torch, transformers or openvino.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from edgekit import __version__
from edgekit.errors import EdgekitError

__all__ = ["cli", "main", "run_command"]

# name -> "module:attribute" under edgekit.cli (a plain table: edgekit.device's name tables share only its shape)
_COMMANDS = {
    "bench": "bench:command",
    "convert": "convert:command",
    "demo": "demo:command",
    "demo-triton": "demo_triton:command",
    "finetune": "finetune:command",
    "monitor": "monitor:command",
    "predict": "predict:command",
    "reload": "reload:command",
    "serve": "serve:command",
    "serve-cloud": "serve:cloud_command",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(f"edgekit.cli.{module}"), attribute)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edgekit")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def cli(verbose: int, debug: bool) -> None:
    """Distil, quantize, export and serve text classifiers on edge CPUs."""
    from edgekit.log import setup_logging

    setup_logging(verbose)


def run_command(command: click.Command, argv: list[str] | None = None, prog_name: str = "edgekit") -> None:
    """Run a click command the edgekit way: one-line errors with a hint and the error's exit code,
    tracebacks with --debug (also used by the scripts in benchmarks/)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("EDGEKIT_DEBUG"))
    try:
        command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except EdgekitError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"Hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """The ``edgekit`` entry point."""
    run_command(cli, argv)
