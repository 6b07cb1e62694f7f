"""The main result of each docs page as a PNG, drawn from the numbers in that page's own tables.

  python bench/plots.py [--docs docs] [--out docs/img]

Reading the tables (rather than re-running experiments) keeps each picture equal to the numbers
printed beside it: rerun this after a page's table changes. Writes
  samplers_sw2.png         docs/samplers.md   sliced W2 vs NFE per solver, both mixtures, with the floor
  multistage_accuracy.png  docs/multistage.md digits accuracy per variant at both training budgets
  bench_throughput.png     docs/bench.md      jaxdiff vs the PyTorch reference, train and sample img/s
  evaluation_fdd.png       docs/evaluation.md FDD of the trained digits model against the references
"""

from __future__ import annotations

import argparse
import os
import re

_NUM = re.compile(r"[-+]?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?")


def tables(md: str) -> list[dict]:
  """Every pipe table in `md`: {'header': [...], 'rows': [[cell, ...]], 'before': text above}."""
  lines = md.splitlines()
  out, i = [], 0
  while i < len(lines):
    if (lines[i].startswith("|") and i + 1 < len(lines)
        and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip())):
      header = _cells(lines[i])
      j = i + 2
      rows = []
      while j < len(lines) and lines[j].startswith("|"):
        rows.append(_cells(lines[j]))
        j += 1
      out.append(dict(header=header, rows=rows, before="\n".join(lines[max(0, i - 6):i]), line=i))
      i = j
    else:
      i += 1
  return out


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip("|").split("|")]


def number(cell: str) -> float:
  """The first number in a cell ('**0.886 ± 0.007**' -> 0.886, '10,097' -> 10097.0)."""
  m = _NUM.search(cell.replace("**", ""))
  if m is None:
    raise ValueError(f"no number in table cell {cell!r}")
  return float(m.group(0).replace(",", ""))


def mean_std(cell: str) -> tuple[float, float]:
  """'0.763 ± 0.022' -> (0.763, 0.022); a plain number has std 0."""
  parts = cell.replace("**", "").split("±")
  return number(parts[0]), (number(parts[1]) if len(parts) > 1 else 0.0)


def find(md: str, first_col: str, has: str | None = None, nth: int = 0) -> dict:
  """The nth table whose first header cell is `first_col` (and which has a column `has`)."""
  found = [t for t in tables(md) if t["header"][0] == first_col and (has is None or has in t["header"])]
  if len(found) <= nth:
    raise ValueError(f"no table #{nth} starting with column {first_col!r}"
                     + (f" with column {has!r}" if has else ""))
  return found[nth]


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path):
  fig.savefig(path, dpi=110, bbox_inches="tight")
  _plt().close(fig)
  return path


def samplers(md: str, path: str) -> str:
  """Sliced W2 vs NFE per solver for each mixture table; Heun's '(k)' cells are plotted at k NFE."""
  plt = _plt()
  panels = [t for t in tables(md) if t["header"][0] == "NFE budget"]
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
  for ax, t in zip(axes[0], panels):
    budgets = [number(r[0]) for r in t["rows"]]
    for k, solver in enumerate(t["header"][1:], start=1):
      nfe, err = [], []
      for b, r in zip(budgets, t["rows"]):
        if not r[k]:
          continue  # not run at this budget (e.g. no GITS row at 35 NFE)
        used = re.search(r"\((\d+)\)", r[k])
        nfe.append(float(used.group(1)) if used else b)
        err.append(number(r[k]))
      ax.plot(nfe, err, "o-", ms=3, label=solver)
    title = re.findall(r"^(gmm\w+) \((d=\d+)[^)]*\)(, n=[\d,]+)?", t["before"], re.M)
    floor = re.findall(r"noise floor ([\d.]+) ± ([\d.]+)", t["before"])
    if floor:
      f, s = map(float, floor[-1])
      ax.axhspan(f - s, f + s, color="0.85", zorder=0)
      ax.axhline(f, color="0.4", lw=1, ls="--", label="noise floor")
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="sliced W2 to true samples",
           title=" ".join(x.strip(", ") for x in title[-1] if x) if title else "")
    ticks = sorted(set(budgets))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.legend(fontsize=7)  # each table has its own solver set (and colours)
  fig.suptitle("Sampler accuracy on Gaussian mixtures (exact denoiser)")
  return _save(fig, path)


def multistage(md: str, path: str) -> str:
  """Accuracy ± std per variant, one group of bars per training budget (train GFLOPs)."""
  plt = _plt()
  t = find(md, "variant", has="accuracy")
  h = t["header"]
  iv, ig, ia = h.index("variant"), h.index("train GFLOPs"), h.index("accuracy")
  budgets = sorted({number(r[ig]) for r in t["rows"]})
  variants = list(dict.fromkeys(r[iv] for r in t["rows"]))
  fig, ax = plt.subplots(figsize=(7, 3.8))
  width = 0.8 / len(budgets)
  for j, b in enumerate(budgets):
    rows = {r[iv]: mean_std(r[ia]) for r in t["rows"] if number(r[ig]) == b}
    xs = [i + (j - (len(budgets) - 1) / 2) * width for i, v in enumerate(variants) if v in rows]
    ms = [rows[v] for v in variants if v in rows]
    ax.bar(xs, [m for m, _ in ms], width, yerr=[s for _, s in ms], capsize=3,
           label=f"{b:g} train GFLOPs")
  ax.set_xticks(range(len(variants)), [v.replace("multi-stage, ", "multi-stage\n") for v in variants],
                fontsize=8)
  ax.set(ylabel="classifier accuracy of samples", ylim=(0, 1),
         title="Digits: unified vs separate vs multi-stage (mean ± std over seeds)")
  ax.legend(fontsize=8)
  return _save(fig, path)


def bench(md: str, path: str) -> str:
  """Train and sample images/s of each implementation in the reference comparison table."""
  plt = _plt()
  t = find(md, "implementation", has="train img/s")
  h = t["header"]
  names = [r[0].split(",")[0] + ("\n" + r[0].split(",", 1)[1].strip() if "," in r[0] else "")
           for r in t["rows"]]
  fig, axes = plt.subplots(1, 2, figsize=(10, 0.9 + 0.7 * len(names)), sharey=True)
  for ax, col in zip(axes, ("train img/s", "sample img/s")):
    vals = [number(r[h.index(col)]) for r in t["rows"]]
    ax.barh(range(len(vals)), vals, color=["C1" if "torch" in n.lower() or "nvlabs" in n.lower()
                                             else "C0" for n in names])
    for i, v in enumerate(vals):
      ax.text(v, i, f" {v:g}", va="center", fontsize=8)
    ax.set(xlabel=col)
    ax.set_xlim(0, max(vals) * 1.25)
  axes[0].set_yticks(range(len(names)), names, fontsize=7)
  axes[0].invert_yaxis()
  fig.suptitle("DDPM++ throughput, jaxdiff vs the PyTorch reference (2-core CPU)")
  return _save(fig, path)


def evaluation(md: str, path: str) -> str:
  """FDD (log scale) of the trained digits model next to the real-data floor and noise."""
  plt = _plt()
  t = find(md, "what", has="fdd", nth=1)  # the table of the trained model
  h = t["header"]
  rows = [(r[0], number(r[h.index("fdd")])) for r in t["rows"]]
  fig, ax = plt.subplots(figsize=(7, 0.8 + 0.45 * len(rows)))
  colors = ["C2" if "real" in n else "C3" if "noise" in n else "C0" for n, _ in rows]
  ax.barh(range(len(rows)), [v for _, v in rows], color=colors)
  for i, (_, v) in enumerate(rows):
    ax.text(v, i, f" {v:g}", va="center", fontsize=8)
  ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=8)
  ax.invert_yaxis()
  ax.set(xscale="log", xlabel="FDD to all real digits (lower is better; log scale)",
         title="Offline digits metric: trained model vs real-data floor and noise")
  ax.set_xlim(min(v for _, v in rows) / 2, max(v for _, v in rows) * 4)
  return _save(fig, path)


PAGES = {"samplers.md": ("samplers_sw2.png", samplers),
         "multistage.md": ("multistage_accuracy.png", multistage),
         "bench.md": ("bench_throughput.png", bench),
         "evaluation.md": ("evaluation_fdd.png", evaluation)}


def make_all(docs: str, out: str) -> list[str]:
  os.makedirs(out, exist_ok=True)
  made = []
  for page, (name, fn) in PAGES.items():
    with open(os.path.join(docs, page)) as f:
      made.append(fn(f.read(), os.path.join(out, name)))
  return made


def main():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--docs", default=os.path.join(root, "docs"))
  p.add_argument("--out", default=os.path.join(root, "docs", "img"))
  args = p.parse_args()
  for path in make_all(args.docs, args.out):
    print(path)


if __name__ == "__main__":
  main()
