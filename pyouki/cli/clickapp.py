"""The click front end, built from the same table as the fast parser: --help, usage errors, people."""

from __future__ import annotations

from typing import Any

import click

from pyouki import OCI_VERSION, __version__
from pyouki.cli.table import COMMANDS, GLOBAL_OPTIONS, Cmd, Opt

# like runc (urfave/cli), -h is --help for the program and every command
_HELP = ["--help", "-h"]


def _option(opt: Opt) -> Any:
    kwargs: dict[str, Any] = {"help": opt.help}
    if opt.kind == "flag":
        kwargs["is_flag"] = True
        kwargs["default"] = False
    elif opt.kind == "list":
        kwargs["multiple"] = True
        kwargs["type"] = str
    elif opt.kind == "int":
        kwargs["type"] = int
        kwargs["default"] = opt.default
    else:
        kwargs["type"] = click.Choice(opt.choices) if opt.choices else str
        kwargs["default"] = opt.default
        kwargs["show_default"] = opt.default is not None
    return click.option(*opt.names, opt.dest, **kwargs)


def _unsupported_help(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """--help of a command pyouki does not support: the help, then a failure (podman's probe)."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(ctx.get_help())
    click.echo("pyouki: checkpoint/restore is not supported by pyouki", err=True)
    ctx.exit(1)


def _command(cmd: Cmd, dispatch: Any) -> click.Command:
    def callback(**kwargs: Any) -> None:
        ctx = click.get_current_context()
        options = {o.dest: (list(kwargs.pop(o.dest)) if o.kind == "list" else kwargs.pop(o.dest))
                   for o in cmd.options}
        args = {name: kwargs.pop(name.replace("-", "_")) for name, _ in cmd.args}
        if cmd.rest:
            args[cmd.rest] = list(kwargs.pop(cmd.rest.replace("-", "_")))
        raise SystemExit(dispatch(cmd, dict(ctx.obj), options, args))

    func: Any = callback
    settings: dict[str, Any] = {"help_option_names": _HELP}
    if cmd.rest:
        # like runc's SkipArgReorder: options end at the first positional, the rest is passed on
        settings["allow_interspersed_args"] = False
        func = click.argument(cmd.rest.replace("-", "_"), metavar=f"[{cmd.rest.upper()}...]", nargs=-1,
                              type=click.UNPROCESSED)(func)
    for name, required in reversed(cmd.args):
        func = click.argument(name.replace("-", "_"), metavar=name.upper(), required=required)(func)
    for opt in reversed(cmd.options):
        func = _option(opt)(func)
    if not cmd.supported:
        func = click.option("--help", "-h", is_flag=True, expose_value=False, is_eager=True, callback=_unsupported_help,
                            help="Show this message and exit (non-zero: the command is not supported).")(func)
    return click.command(cmd.name, help=cmd.help, context_settings=settings,
                         add_help_option=cmd.supported)(func)


def build(dispatch: Any) -> click.Group:
    """The click group for every command; dispatch(cmd, globals, options, args) runs one."""

    def group_callback(**kwargs: Any) -> None:
        click.get_current_context().obj = kwargs

    func: Any = group_callback
    for opt in reversed(GLOBAL_OPTIONS):
        func = _option(opt)(func)
    version = f"pyouki version {__version__}\nspec: {OCI_VERSION}"
    func = click.version_option(version, "--version", "-v", message="%(version)s")(func)
    group = click.group("pyouki", help="pyouki: a rootless-first OCI container runtime",
                        context_settings={"help_option_names": _HELP})(func)
    for cmd in COMMANDS.values():
        group.add_command(_command(cmd, dispatch))
    return group


def main(argv: list[str], dispatch: Any) -> int:
    """Run click on argv; return the exit status. Usage errors are one line, like every error."""
    try:
        result = build(dispatch).main(argv, prog_name="pyouki", standalone_mode=False)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        return 0
    except click.ClickException as e:
        message = e.format_message().replace("\n", " ")
        ctx = getattr(e, "ctx", None)
        command = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
        hint = f" (see 'pyouki{command} --help')"
        click.echo(f"pyouki: {message[:1].lower()}{message[1:].rstrip('.')}{hint}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        return 130
    return result if isinstance(result, int) else 0
