"""A plan stage that shifts output biases of a finished run's model (given, or searched on its validation split)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from respkd.bias import adjust_bias
from respkd.checkpoint import CHECKPOINT_NAME, read_checkpoint_meta
from respkd.config import ClassIndex, PathText, RunName
from respkd.errors import RespkdError
from respkd.files import atomic_write_text, read_json
from respkd.plan.stage import Log, StageBase
from respkd.provenance import made_from

__all__ = ["BiasStage"]


class BiasStage(StageBase):
    """Shift output biases of a finished run's model (see :mod:`respkd.bias`); writes ``<name>/``."""

    kind: Literal["bias"]
    run: PathText
    name: RunName | None = None  # default: <run>-bias
    classes: list[Annotated[ClassIndex, Field(ge=0)]] = Field(..., min_length=1)
    shift: float | None = Field(None, ge=-1000, le=1000)
    search: bool = False
    low: float = Field(-15.0, ge=-1000, le=1000)
    high: float = Field(15.0, ge=-1000, le=1000)
    step: float = Field(0.1, gt=0, le=1000)

    MEASURES: ClassVar[tuple[str, ...]] = (
        "shift", "test_errors_before", "test_errors_after", "test_error_pct_before", "test_error_pct_after",
        "class_errors_before", "class_errors_after", "class_correct_pct_before", "class_correct_pct_after")
    HEADLINE: ClassVar[tuple[str, ...]] = ("shift", "test_errors_before", "test_errors_after")

    @model_validator(mode="after")
    def _shift_or_search(self) -> "BiasStage":
        if (self.shift is None) == (not self.search):
            raise ValueError("give either 'shift' or 'search: true'")
        if self.search and not self.low < self.high:
            raise ValueError("'low' must be below 'high'")
        return self

    @property
    def out_name(self) -> str:
        return self.name or f"{self.run}-bias"

    @property
    def outputs(self) -> list[str]:
        return [self.out_name]

    @property
    def needs(self) -> list[str]:
        return [self.run]

    def check_inputs(self, made: dict[str, StageBase], where: str) -> None:
        if self.search and self.run in made:
            source = next(c for c in made[self.run].configs if c.name == self.run)
            if source.data.val_size == 0:
                raise RespkdError(f"{where}: the bias search needs a validation split, but run '{source.name}' has "
                                  "data.val_size 0")

    def spec(self, root: Path) -> dict[str, Any]:
        """What the adjusted model is made from: the stage's settings and the source model's weights."""
        source = read_checkpoint_meta(root / self.run / CHECKPOINT_NAME)
        fields = self.model_dump(exclude={"paper", "note"})
        return {**fields, "source_weights_sha256": source["weights_sha256"]}

    def finished(self, root: Path) -> bool:
        out_dir = root / self.out_name
        return made_from(out_dir / "bias.json", self.spec(root)) and (out_dir / CHECKPOINT_NAME).is_file()

    def execute(self, tag: str, root: Path, force: bool, log: Log) -> None:
        out_dir, spec = root / self.out_name, self.spec(root)
        if not force and self.finished(root):
            log(f"{tag} {self.out_name}: already finished in {out_dir}, skipped")
            return
        how = f"searched over {self.low:g}..{self.high:g}" if self.search else f"shift {self.shift:+g}"
        log(f"{tag} {self.out_name}: bias of class(es) {self.classes} of {self.run}, {how}")
        (out_dir / "bias.json").unlink(missing_ok=True)
        result = adjust_bias(root / self.run / CHECKPOINT_NAME, self.classes, shift=self.shift, search=self.search,
                             low=self.low, high=self.high, step=self.step, out=out_dir / CHECKPOINT_NAME,
                             overwrite_out=True)
        atomic_write_text(out_dir / "bias.json", json.dumps({"spec": spec, "result": result}, indent=2))

    def _result(self, root: Path) -> dict[str, Any]:
        return read_json(root / self.out_name / "bias.json")["result"]

    def measures(self, root: Path) -> dict[str, float | None]:
        r = self._result(root)
        out = {"shift": r["shift"]}
        for when in ("before", "after"):
            m = r[when]
            out.update({f"test_errors_{when}": m["errors"], f"test_error_pct_{when}": m["error_pct"],
                        f"class_errors_{when}": m["class_errors"], f"class_correct_pct_{when}": m["class_correct_pct"]})
        return out

    def section(self, root: Path) -> list[str]:
        r = self._result(root)
        how = (f"searched on {r['search']['n']} validation examples over {self.low:g}..{self.high:g}, step "
               f"{self.step:g}" if r["searched"] else "given")
        classes = ",".join(map(str, self.classes))
        lines = [f"### {self.out_name}: bias of class(es) {classes} of {self.run} shifted by {r['shift']:+g} ({how})",
                 "", f"| | test errors | test error % | errors on class(es) {classes} | per class |",
                 "|---|---:|---:|---:|---|"]
        for when in ("before", "after"):
            m = r[when]
            lines.append(f"| {when} | {m['errors']} / {m['n']} | {m['error_pct']:.2f} | {m['class_errors']} / "
                         f"{m['class_n']} | {' '.join(map(str, m['errors_per_class']))} |")
        return lines
