"""The end of a `vigil score` job: what was scored, flagged and refused, and how fast."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Summary:
    target_fpr: float
    rows: int = 0
    anomalies: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def scored(self) -> int:
        return self.rows - sum(self.errors.values())

    def add(self, table: pa.Table) -> None:
        """Count a table of result rows (columns `is_anomaly` and `error`)."""
        self.rows += table.num_rows
        self.anomalies += int(pc.sum(table["is_anomaly"].cast(pa.int64())).as_py() or 0)
        codes = pc.value_counts(table["error"].drop_null())
        for item in codes.to_pylist():
            self.errors[item["values"]] += item["counts"]

    def as_dict(self) -> dict[str, object]:
        return {
            "images": self.rows,
            "scored": self.scored,
            "anomalies": self.anomalies,
            "target_fpr": self.target_fpr,
            "errors": dict(self.errors),
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.rows / self.seconds, 1) if self.seconds else None,
        }

    def text(self, out: str) -> str:
        rate = self.anomalies / self.scored if self.scored else 0.0
        speed = f"{self.rows / self.seconds:,.0f} images/s" if self.seconds else "-"
        errors = ", ".join(f"{code} {n:,}" for code, n in self.errors.most_common()) or "none"
        return "\n".join(
            [
                f"scored {self.scored:,} of {self.rows:,} images in {self.seconds:.1f} s "
                f"({speed}) -> {out}",
                f"anomalies: {self.anomalies:,} ({rate:.2%} of the scored; target FPR "
                f"{self.target_fpr:.2%}, the rate expected on normal images)",
                f"errors: {sum(self.errors.values()):,} ({errors})",
            ]
        )
