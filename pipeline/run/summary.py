"""The table a finished run prints, and where to see it in MLflow's UI."""

from __future__ import annotations

from pipeline.record import RunRecord


def print_summary(record: RunRecord, make_ui_serves_it: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Run {record.status.value}", show_header=False, title_justify="left")
    for key, value in record.metrics.items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("run folder", record.paths.run_dir)
    console = Console()
    if record.run_id:
        table.add_row("MLflow run", record.run_id)
    console.print(table)
    if record.run_id:
        if record.tracking_uri.startswith("http"):
            ui = "open"
        elif make_ui_serves_it:
            ui = "make ui"
        else:
            ui = f"mlflow ui --backend-store-uri {record.tracking_uri}"
        console.print(f"MLflow UI: {ui}  ->  {record.ui_url}", soft_wrap=True)
