"""The table a finished run prints, and where to see it in MLflow's UI."""

from __future__ import annotations

from pipeline.record import RunRecord


def print_summary(record: RunRecord, make_ui_serves_it: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Run {record.status.value}", show_header=False, title_justify="left")
    for key, value in record.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console = Console()
    if record.run_id:
        table.add_row("MLflow run", record.run_id)
    if record.registered_model:
        table.add_row("registered", record.registered_model)
    console.print(table)
    # On lines of their own, whole: a table cell would cut a long path at the terminal's width.
    console.print(f"Run folder: {record.paths.run_dir}", soft_wrap=True)
    if record.run_id:
        if record.tracking_uri.startswith("http"):
            ui = "open"
        elif make_ui_serves_it:
            ui = "make ui"
        else:
            ui = f"mlflow ui --backend-store-uri {record.tracking_uri}"
        console.print(f"MLflow UI: {ui}  ->  {record.ui_url}", soft_wrap=True)
