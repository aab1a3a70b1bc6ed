"""The ``qcompiler`` command line: ``qcompiler demo`` and ``qcompiler passes``."""
from __future__ import annotations

import click


def _version() -> str:
    """The installed distribution's version; the package's own when run from a checkout."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("qcompiler")
    except PackageNotFoundError:
        import qcompiler

        return getattr(qcompiler, "__version__", "unknown")


def _print_version(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"qcompiler {_version()}")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show the version and exit.")
def main():
    """qcompiler: a compiler-style int8 quantization framework for PyTorch."""


@main.command()
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              default=None, metavar="PATH", help="Also write the figures to PATH as JSON.")
@click.option("--requant-mode", type=click.Choice(["fp32", "fixed_point"]), default="fp32",
              show_default=True, help="How integer accumulators are requantized.")
@click.option("--retrain", is_flag=True, help="Ignore the cached float weights and retrain.")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="torch intra-op threads while timing (default: torch's own setting).")
@click.option("--target", default="auto", show_default=True, metavar="NAME",
              help="where the int8 model runs: 'reference', 'x86', or 'auto' (x86 when available).")
def demo(json_path, requant_mode, retrain, threads, target):
    """Train (or load) a digits CNN, quantize it to int8 and compare it with float."""
    import qcompiler

    from .demo import run_demo

    targets = qcompiler.available_targets()
    if target == "auto":
        target = "x86" if targets.get("x86", (False, ""))[0] else "reference"
    elif target not in targets:
        raise click.BadParameter(f"unknown target {target!r}; registered: {sorted(targets)}")
    elif not targets[target][0]:
        raise click.BadParameter(f"target {target!r} is not available here: {targets[target][1]}")
    run_demo(json_path=json_path, requant_mode=requant_mode, retrain=retrain, threads=threads,
             target=target)


@main.command()
def passes():
    """Print the default pipeline, pass by pass, in order."""
    import qcompiler

    print(qcompiler.default_pipeline().describe())


@main.command("supported-ops")
@click.option("--write", "path", type=click.Path(dir_okay=False, writable=True), default=None, metavar="PATH",
              help="Write the table to PATH (docs/supported-ops.md) instead of printing it.")
def supported_ops(path):
    """Print the supported-ops table: every op, what it becomes, and where each target runs it."""
    from pathlib import Path

    from .supported_ops import render

    if path:
        Path(path).write_text(render())
    else:
        click.echo(render(), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
