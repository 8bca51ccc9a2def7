"""What every figure of the report shares: the matplotlib style, the colours, the student rows."""
from __future__ import annotations

import matplotlib as mpl
import pandas as pd

STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.titleweight": "bold", "axes.labelsize": 12,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "legend.frameon": False, "figure.dpi": 100, "savefig.dpi": 200, "savefig.bbox": "tight"}
COLORS = mpl.colormaps["tab10"].colors
PAPER_COLOR = "0.35"
CONTEXT_COLOR = "0.82"   # the other steps' curves behind a small multiple's own


def students(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["role"] == "student"]


def first_model(runs: pd.DataFrame) -> str:
    return str(students(runs)["model"].iloc[0])


def step_order(runs: pd.DataFrame, model: str) -> list[str]:
    """The student steps of `model` in recipe order."""
    s = students(runs)
    return s[s["model"] == model].drop_duplicates("step").sort_values("step_index")["step"].tolist()
