"""What every training run writes beside its checkpoints: metrics.csv and the resume check."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from ..fileio import write_text_atomic

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"


def write_metrics(out_dir: Path, rows: list[dict], columns: Sequence[str]) -> None:
    """Rewrite metrics.csv from the rows kept in the training state, so a resumed run never repeats or
    loses a row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(Path(out_dir) / METRICS_FILE, buffer.getvalue())


def check_resumable(out_dir: Path, run_config: dict[str, Any], *, state_file: str, keys: Sequence[str],
                    what: str = "run") -> None:
    """An interrupted run in `out_dir` may only be resumed with the same settings (`keys` of the config)."""
    out_dir = Path(out_dir)
    config_path = out_dir / CONFIG_FILE
    if not (out_dir / state_file).exists() or not config_path.exists():
        return
    try:
        previous = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"cannot read {config_path}; delete {out_dir} to start over") from None
    if any(previous.get(key) != run_config.get(key) for key in keys):
        raise UserError(f"{out_dir} holds an interrupted {what} with different settings; resume it with the same "
                        "options or use another --out")
