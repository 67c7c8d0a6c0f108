"""Commands that read workflow files only: validate, graph, schema."""

from __future__ import annotations

import sys

import click

from runner.cli.main import cli
from runner.errors import ExitCode


@cli.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    help="text: FILE:LINE:COL lines; json; github: Actions annotations.",
)
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(files: tuple[str, ...], output: str, strict: bool) -> None:
    """Check workflow files: schema, references, graph, expressions."""
    from runner.report import problems as render
    from runner.spec.validate import check_file

    reports = [check_file(path, strict=strict) for path in files]
    text = {"text": render.as_text, "json": render.as_json, "github": render.as_github}[
        output
    ](reports)
    if text:
        click.echo(text)
    failed = any(report.has_errors() for report in reports)
    sys.exit(ExitCode.INVALID if failed else ExitCode.OK)


@cli.command()
@click.argument("file")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "mermaid", "dot"]),
    default="text",
    help="text: steps in waves; mermaid or dot: for diagrams.",
)
def graph(file: str, fmt: str) -> None:
    """Show the DAG of a workflow."""
    from runner.report.graph import render_graph
    from runner.spec.validate import load_workflow

    click.echo(render_graph(load_workflow(file), fmt))


@cli.command()
def schema() -> None:
    """Print the workflow file's JSON Schema (draft-07)."""
    from runner.spec.schema import schema_text

    click.echo(schema_text().rstrip("\n"))
