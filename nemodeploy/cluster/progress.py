"""A line per node that says what bring-up is doing there; silent without a console."""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class NodeSteps:
    """Thread-safe (rich's Progress is): workers start in parallel and report here."""

    def __init__(self, console: Console | None, nodes: list[str]):
        self._progress = (
            Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.fields[node]:<12}"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            if console is not None
            else None
        )
        self._tasks: dict[str, int] = {}
        self._nodes = nodes

    def __enter__(self) -> "NodeSteps":
        if self._progress is not None:
            self._progress.start()
            for node in self._nodes:
                self._tasks[node] = self._progress.add_task("waiting", node=node, total=1)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def step(self, node: str, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._tasks[node], description=text)

    def done(self, node: str, text: str, ok: bool = True) -> None:
        if self._progress is not None:
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            self._progress.update(self._tasks[node], description=f"{mark} {text}", completed=1)
