"""Training metrics: device-side per-step buffer, JSONL file, optional TensorBoard.

Per-step values stay on the device until a flush (every `log_every` steps), where one
`tolist()` brings the whole window to the host: reading a CUDA scalar every step would
stall the GPU pipeline and dominate the trainer's overhead.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from clipheads.core.atomic import atomic_write_text


class StepWindow:
    """Scalars of the steps since the last flush, kept as device tensors."""

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._rows: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, values: dict[str, Any]) -> None:
        self._steps.append(step)
        self._rows.append(values)

    def flush(self) -> list[tuple[int, dict[str, float]]]:
        """All buffered rows as Python floats (one host sync), and clear the buffer."""
        steps, rows = self._steps, self._rows
        self._steps, self._rows = [], []
        tensors = [v for row in rows for v in row.values() if isinstance(v, torch.Tensor)]
        if tensors:
            dev = tensors[0].device
            host = torch.stack(
                [t.detach().float().mean().to(dev) for t in tensors]
            ).tolist()
        else:
            host = []
        it = iter(host)
        out = []
        for step, row in zip(steps, rows):
            out.append((step, {k: (next(it) if isinstance(v, torch.Tensor) else float(v))
                               for k, v in row.items()}))
        return out


def mean_rows(rows: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Per-key mean over a flushed window (keys missing in some rows are averaged where present)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for _, row in rows:
        for k, v in row.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


class MetricsLogger:
    """Appends one JSON object per line to `metrics.jsonl` (+ TensorBoard when importable).

    Only the main process should own one; pass `enabled=False` elsewhere.
    """

    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            except Exception:  # not installed: JSONL alone is the record
                SummaryWriter = None  # type: ignore[assignment]
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step`: a resumed run re-does them, and a curve
        should not show the killed run's tail twice."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # half line from a killed writer
                continue
            if int(rec.get("step", 0)) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must hold 'step'); non-finite floats become null in JSON."""
        if not self.enabled:
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __del__(self) -> None:  # best effort; the trainer closes explicitly
        try:
            self.close()
        except Exception:
            pass

