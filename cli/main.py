"""Entry point of the ``ckpt`` command: the command group, error handling and exit codes.

Exit codes, for every command: 0 ok / clean / same, 1 findings or differences, 2 error.
Errors print one line (``--debug`` shows the traceback).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click

from ckpt import CheckpointError, __version__


from .exit_codes import EXIT_ERROR, EXIT_OK


class CkptGroup(click.Group):
    """Turns library errors into one clear line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise
        except (CheckpointError, OSError, ValueError) as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            else:
                click.echo(f"ckpt: error: {e}", err=True)
            ctx.exit(EXIT_ERROR)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as e:  # a bug in ckpt: still one line (and exit 2) unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            else:
                click.echo(f"ckpt: internal error: {type(e).__name__}: {e} (rerun with --debug for details)", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=CkptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpt")
@click.option("--debug", is_flag=True, help="Show a full traceback on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Safe inspection and handling of PyTorch checkpoints.

    Nothing in a file is ever executed: pickles run through ckpt's own restricted interpreter.

    \b
    Examples:
      ckpt inspect model.pt
      ckpt inspect model.pt --json | jq .totals
      ckpt diff before.pt after.pt
      ckpt scan downloads/
      ckpt relocate model.pt model-cpu.pt --to cpu
      ckpt convert model.pt model.safetensors
      ckpt verify model.safetensors
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    from .inspect_cmd import inspect_command
    from .relocate_cmd import relocate_command
    from .scan_cmd import scan_command
    from .convert_cmd import convert_command, verify_command

    cli.add_command(inspect_command)
    cli.add_command(relocate_command)
    cli.add_command(scan_command)
    cli.add_command(convert_command)
    cli.add_command(verify_command)

    from .diff_cmd import diff_command

    cli.add_command(diff_command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the command line; exits with the command's code.

    Run as the ``ckpt`` program (``argv`` None: ``sys.argv[1:]``), the process ends as soon as its
    output is flushed, without the interpreter's teardown: freeing the million objects of a
    100,000-tensor summary one by one took 0.3 to 0.5 s, for nothing. Called with ``argv`` from
    other Python code, it raises ``SystemExit`` instead, as click does."""
    try:
        cli.main(args=argv, prog_name="ckpt", standalone_mode=True)
        code: Any = EXIT_OK
    except SystemExit as e:
        code = e.code
    except BrokenPipeError:  # `ckpt inspect big.pt | head`: the reader left, nothing went wrong
        _to_devnull(sys.stdout)
        code = EXIT_OK
    if argv is not None:
        sys.exit(code)
    if code is None:
        code = EXIT_OK
    elif not isinstance(code, int):  # sys.exit("message"): printed, as Python prints it
        sys.stderr.write(f"{code}\n")
        code = EXIT_ERROR
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # the reader left (a broken pipe): what was not written is not wanted
            _to_devnull(stream)
    os._exit(code)


def _to_devnull(stream: Any) -> None:
    """Send what ``stream`` still has to write nowhere (its reader has gone)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):
        pass
