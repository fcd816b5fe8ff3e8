"""A plan stage that measures an ensemble of finished runs against its members and a net distilled from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from respkd.checkpoint import CHECKPOINT_NAME, read_checkpoint_meta
from respkd.checkpoint_eval import evaluate_ensemble
from respkd.config import PathText, RunName, Temperature
from respkd.files import atomic_write_text, read_json
from respkd.plan.stage import Log, StageBase
from respkd.provenance import made_from

__all__ = ["EnsembleEvalStage"]


class EnsembleEvalStage(StageBase):
    """Test errors of an ensemble of finished runs, of each member, and of a net distilled from it."""

    kind: Literal["ensemble_eval"]
    name: RunName
    runs: list[PathText] = Field(..., min_length=2)
    combine: Literal["mean_probs", "mean_logits"] = "mean_probs"
    temperature: Temperature = 1.0
    distilled: PathText | None = None

    MEASURES: ClassVar[tuple[str, ...]] = ("ensemble_errors", "member_errors_mean", "distilled_errors",
                                           "gain_fraction", "ensemble_error_pct", "member_error_pct_mean",
                                           "distilled_error_pct")
    HEADLINE: ClassVar[tuple[str, ...]] = ("member_errors_mean", "ensemble_errors", "distilled_errors",
                                           "gain_fraction")

    @property
    def outputs(self) -> list[str]:
        return [self.name]

    @property
    def needs(self) -> list[str]:
        return [*self.runs, *([self.distilled] if self.distilled else [])]

    def spec(self, root: Path) -> dict[str, Any]:
        """What the evaluation is made from: the stage's settings and every model's weights."""
        digests = [read_checkpoint_meta(root / r / CHECKPOINT_NAME)["weights_sha256"] for r in self.needs]
        return {**self.model_dump(exclude={"paper", "note"}), "weights_sha256": digests}

    def finished(self, root: Path) -> bool:
        return made_from(root / self.name / "ensemble.json", self.spec(root))

    def execute(self, tag: str, root: Path, force: bool, log: Log) -> None:
        out_dir, spec = root / self.name, self.spec(root)
        if not force and self.finished(root):
            log(f"{tag} {self.name}: already finished in {out_dir}, skipped")
            return
        log(f"{tag} {self.name}: ensemble of {len(self.runs)} ({self.combine}, T={self.temperature:g})")
        result = evaluate_ensemble([root / r / CHECKPOINT_NAME for r in self.runs], self.combine, self.temperature,
                                   distilled=root / self.distilled / CHECKPOINT_NAME if self.distilled else None)
        atomic_write_text(out_dir / "ensemble.json", json.dumps({"spec": spec, "result": result}, indent=2))

    def _result(self, root: Path) -> dict[str, Any]:
        return read_json(root / self.name / "ensemble.json")["result"]

    def measures(self, root: Path) -> dict[str, float | None]:
        r = self._result(root)
        n = r["ensemble"]["n"]
        d = r.get("distilled")
        return {"ensemble_errors": r["ensemble"]["errors"], "member_errors_mean": r["member_errors_mean"],
                "distilled_errors": d["errors"] if d else None, "gain_fraction": r.get("gain_fraction"),
                "ensemble_error_pct": 100.0 * r["ensemble"]["errors"] / n,
                "member_error_pct_mean": 100.0 * r["member_errors_mean"] / n,
                "distilled_error_pct": 100.0 * d["errors"] / n if d else None}

    def section(self, root: Path) -> list[str]:
        r = self._result(root)
        lines = [f"### {self.name}: ensemble of {len(self.runs)} ({self.combine}, T = {self.temperature:g})", "",
                 "| model | test errors | top-1 (%) |", "|---|---:|---:|"]
        for m in r["members"]:
            lines.append(f"| member {m['name']} | {m['errors']} | {m['top1']:.2f} |")
        lines.append(f"| mean member | {r['member_errors_mean']:.1f} | |")
        lines.append(f"| ensemble | {r['ensemble']['errors']} | {r['ensemble']['top1']:.2f} |")
        if r.get("distilled"):
            d = r["distilled"]
            lines.append(f"| distilled {d['name']} | {d['errors']} | {d['top1']:.2f} |")
            if r.get("gain_fraction") is not None:
                lines += ["", f"The distilled net kept {100 * r['gain_fraction']:.0f}% of the ensemble's improvement "
                              "over the mean member (the paper, speech: more than 80%)."]
        return lines
