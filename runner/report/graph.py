"""The DAG as text waves, Mermaid or Graphviz dot."""

from __future__ import annotations

import json

from runner.spec.model import Workflow


def waves(workflow: Workflow) -> list[list[str]]:
    """Steps grouped by depth: each wave needs only earlier waves."""
    import networkx as nx

    digraph = nx.DiGraph()
    digraph.add_nodes_from(workflow.steps)
    digraph.add_edges_from(
        (needed, step.name) for step in workflow.steps.values() for needed in step.needs
    )
    order = {name: index for index, name in enumerate(workflow.steps)}
    return [
        sorted(wave, key=order.__getitem__)
        for wave in nx.topological_generations(digraph)
    ]


def render_graph(workflow: Workflow, fmt: str) -> str:
    if fmt == "mermaid":
        return _mermaid(workflow)
    if fmt == "dot":
        return _dot(workflow)
    lines = []
    for index, wave in enumerate(waves(workflow), start=1):
        for name in wave:
            needs = workflow.steps[name].needs
            after = f"  (needs {', '.join(needs)})" if needs else ""
            lines.append(f"{index:>3}  {name}{after}")
    return "\n".join(lines)


def _mermaid(workflow: Workflow) -> str:
    ids = {name: f"s{index}" for index, name in enumerate(workflow.steps)}
    lines = ["flowchart TD"]
    lines += [f'  {ids[name]}["{name}"]' for name in workflow.steps]
    lines += [
        f"  {ids[needed]} --> {ids[step.name]}"
        for step in workflow.steps.values()
        for needed in step.needs
    ]
    return "\n".join(lines)


def _dot(workflow: Workflow) -> str:
    lines = [f"digraph {json.dumps(workflow.name)} {{", "  rankdir=LR;"]
    lines += [f"  {json.dumps(name)};" for name in workflow.steps]
    lines += [
        f"  {json.dumps(needed)} -> {json.dumps(step.name)};"
        for step in workflow.steps.values()
        for needed in step.needs
    ]
    return "\n".join([*lines, "}"])
