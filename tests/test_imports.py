"""The import directions of docs/ARCHITECTURE.md ("What may import what"), checked on the source.

Every module under jaxdiff/ is parsed with `ast` (nothing is imported or run); an import anywhere
in a module counts, also one inside a function (lazy imports are dependencies too). The rules on
the math and denoiser layers hold for everything a module reaches through other jaxdiff modules,
not only for what it names itself.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxdiff")

# The math layer: arrays and numbers in, arrays out. Nothing of training, building or the CLI.
MATH = ("jaxdiff.precond", "jaxdiff.losses", "jaxdiff.sampling", "jaxdiff.schedules",
        "jaxdiff.exact", "jaxdiff.consistency", "jaxdiff.dg", "jaxdiff.phema",
        "jaxdiff.edm2_loss", "jaxdiff.timesteps", "jaxdiff.eval.metrics", "jaxdiff.nets",
        "jaxdiff.nets.*", "jaxdiff.denoiser", "jaxdiff.guidance")
MATH_FORBIDDEN = ("jaxdiff.train", "jaxdiff.build", "jaxdiff.cli", "jaxdiff.config",
                  "jaxdiff.families", "jaxdiff.model", "ml_collections")
# The denoiser layer serves inference: never training internals.
DENOISER = ("jaxdiff.denoiser", "jaxdiff.guidance")
# Who may hold a ConfigDict.
CONFIG_READERS = ("jaxdiff.build", "jaxdiff.cli", "jaxdiff.cli.*", "jaxdiff.config")
# The specs and the skeleton are below the registry of families and the builder.
BELOW_BUILD = {
    "jaxdiff.specs": ("jaxdiff",),  # a leaf: no jaxdiff module at all
    "jaxdiff.train.step": ("jaxdiff.families", "jaxdiff.build", "jaxdiff.cli", "ml_collections"),
    "jaxdiff.families": ("jaxdiff.build", "jaxdiff.cli", "ml_collections"),
    "jaxdiff.families.*": ("jaxdiff.build", "jaxdiff.cli", "ml_collections"),
}


def module_name(path: str, root: str = ROOT) -> str:
  rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
  return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def read_package(package_dir: str = PACKAGE) -> dict:
  """{module name: (source, is_package)} of every .py file under `package_dir`."""
  out = {}
  root = os.path.dirname(package_dir)
  for folder, _, files in os.walk(package_dir):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        with open(path, encoding="utf-8") as fh:
          out[module_name(path, root)] = (fh.read(), f == "__init__.py")
  return out


def direct_imports(name: str, source: str, is_package: bool, known) -> set:
  """Modules `source` imports (anywhere in it). `from pkg import sub` names pkg.sub when that is
  a module (`known`), else pkg; relative imports are resolved against `name`."""
  package = name if is_package else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
      subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
      out |= set(subs) if len(subs) == len(node.names) else set(subs) | {base}
  return out


def import_graph(modules: dict) -> dict:
  return {name: direct_imports(name, src, is_pkg, modules)
          for name, (src, is_pkg) in modules.items()}


def reachable(graph: dict, start: str) -> set:
  """Everything `start` imports, directly or through other modules of the graph."""
  seen, todo = set(), [start]
  while todo:
    for dep in graph.get(todo.pop(), ()):
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  return seen


def matches(name: str, patterns) -> bool:
  """`name` is one of `patterns` or inside one ("jaxdiff.train" covers jaxdiff.train.step;
  "jaxdiff.nets.*" covers the modules of jaxdiff.nets, not the package itself)."""
  for p in patterns:
    if p.endswith(".*"):
      if name.startswith(p[:-1]):
        return True
    elif name == p or name.startswith(p + "."):
      return True
  return False


def violations(modules: dict) -> list:
  """Every broken rule as 'module -> imported (rule)'."""
  graph = import_graph(modules)
  out = []

  def check(sources, forbidden, rule, transitive=True, exact=False):
    for name in sorted(graph):
      if not (name in sources if exact else matches(name, sources)):
        continue
      deps = reachable(graph, name) if transitive else graph[name]
      for dep in sorted(deps):
        if matches(dep, forbidden) and dep != name:
          out.append(f"{name} -> {dep} ({rule})")

  check(MATH, MATH_FORBIDDEN, "math layer")
  check(DENOISER, ("jaxdiff.train",), "denoiser layer")
  not_readers = [n for n in graph if not matches(n, CONFIG_READERS)]
  check(not_readers, ("ml_collections",), "only build/cli/config hold a ConfigDict",
        transitive=False, exact=True)
  check([n for n in graph if not matches(n, ("jaxdiff.cli", "jaxdiff.__main__"))],
        ("jaxdiff.cli",), "nothing below the CLI imports it", transitive=False, exact=True)
  for source, forbidden in BELOW_BUILD.items():
    check((source,), forbidden, f"{source} stays below", transitive=False,
          exact=not source.endswith(".*"))
  return out


def test_the_package_keeps_its_import_directions():
  modules = read_package()
  # The rules name real modules (a renamed module would otherwise escape them silently).
  for name in ("jaxdiff.precond", "jaxdiff.denoiser", "jaxdiff.guidance", "jaxdiff.build",
               "jaxdiff.specs", "jaxdiff.train.step", "jaxdiff.families.plain",
               "jaxdiff.nets.songunet", "jaxdiff.eval.metrics", "jaxdiff.timesteps"):
    assert name in modules, name
  assert violations(modules) == []


def _synthetic(**sources) -> dict:
  return {name: (src, is_pkg) for name, (src, is_pkg) in sources.items()}


GOOD = dict(
    **{"jaxdiff": ("def load(w):\n  from jaxdiff.model import load\n", True),
       "jaxdiff.precond": ("import jax\nfrom jaxdiff.errors import JaxdiffError\n", False),
       "jaxdiff.errors": ("", False),
       "jaxdiff.model": ("from jaxdiff import build\n", False),
       "jaxdiff.build": ("import ml_collections\nfrom jaxdiff import train\n", False),
       "jaxdiff.train": ("", True),
       "jaxdiff.train.step": ("", False),
       "jaxdiff.nets": ("", True),
       "jaxdiff.nets.songunet": ("from . import layers\n", False),
       "jaxdiff.nets.layers": ("", False),
       "jaxdiff.denoiser": ("from jaxdiff import precond as precond_lib\n", False),
       "jaxdiff.specs": ("import dataclasses\n", False)})


@pytest.mark.parametrize("name,source,expected", [
    # A math module importing the trainer, at the top...
    ("jaxdiff.precond", "from jaxdiff.train import step\n", "jaxdiff.precond -> jaxdiff.train"),
    # ... or lazily inside a function.
    ("jaxdiff.precond", "def f():\n  import jaxdiff.build\n", "jaxdiff.precond -> jaxdiff.build"),
    # A network reaching training through a relative import of a helper that imports it.
    ("jaxdiff.nets.layers", "from jaxdiff.model import Model\n",
     "jaxdiff.nets.songunet -> jaxdiff.build"),
    # The denoiser layer reaching into training.
    ("jaxdiff.denoiser", "from jaxdiff.train.step import StepConfig\n",
     "jaxdiff.denoiser -> jaxdiff.train"),
    # A ConfigDict where none belongs.
    ("jaxdiff.train.step", "import ml_collections\n",
     "jaxdiff.train.step -> ml_collections (only build/cli/config"),
    # The specs importing anything of jaxdiff.
    ("jaxdiff.specs", "from jaxdiff import precond\n", "jaxdiff.specs -> jaxdiff.precond"),
])
def test_the_check_catches_a_bad_module(name, source, expected):
  good = _synthetic(**GOOD)
  assert violations(good) == []  # the synthetic package itself is clean ...
  bad = dict(good)
  bad[name] = (source, good[name][1])
  found = violations(bad)
  assert any(v.startswith(expected) for v in found), found  # ... and one bad line is caught


def test_relative_imports_resolve_to_their_module():
  known = {"jaxdiff.nets.layers", "jaxdiff.nets", "jaxdiff.train", "jaxdiff.train.step"}
  assert direct_imports("jaxdiff.nets.songunet", "from . import layers\n", False,
                        known) == {"jaxdiff.nets.layers"}
  assert direct_imports("jaxdiff.nets", "from .. import train\n", True, known) == {"jaxdiff.train"}
  assert direct_imports("jaxdiff.nets.unet", "from ..train.step import x\n", False,
                        known) == {"jaxdiff.train.step"}
