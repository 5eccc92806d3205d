"""The package's modules import each other without cycles, and its folders import one way.

Every module of vae_pipeline is parsed (not imported) and every import of another of its
modules counts, wherever it stands: at the top, or inside a function (an import deferred into a
function to dodge a cycle is still a cycle, one that only shows at run time). Importing
`vae_pipeline.a.b` also runs the packages above it (`vae_pipeline/__init__.py`,
`vae_pipeline/a/__init__.py`), so an edge goes to each of those too.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_package_dirs():
  """Folders that install as the package's modules: setup.py's PACKAGE_DIRS."""
  with open(os.path.join(REPO, "setup.py")) as f:
    return next(ast.literal_eval(node.value) for node in ast.parse(f.read()).body
                if isinstance(node, ast.Assign) and node.targets[0].id == "PACKAGE_DIRS")


PACKAGE_DIRS = setup_package_dirs()
# Each folder's job, lowest first: a module imports its own folder's modules and lower folders'
# only. pipeline/ holds the DAG, its configuration and the runners; cli/ is the command line
# over all of them. (The package's own __init__, which every import runs, stands outside.)
FOLDER_ORDER = ("models", "data", "client", "components", "pipeline", "cli")


def package_modules():
  """{module name: source path} for every .py file of the package."""
  modules = {}
  for package, folder in PACKAGE_DIRS.items():
    root = os.path.join(REPO, folder)
    for directory, subdirs, files in os.walk(root):
      subdirs[:] = [d for d in subdirs if os.path.exists(os.path.join(directory, d, "__init__.py"))]
      if directory != root and not os.path.exists(os.path.join(directory, "__init__.py")):
        continue
      parts = os.path.relpath(directory, root).split(os.sep)
      prefix = ".".join([package] + [p for p in parts if p != "."])
      for name in files:
        if name.endswith(".py"):
          module = prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"
          modules.setdefault(module, os.path.join(directory, name))
  return modules


def imported_names(module, path):
  """Absolute names of everything `module` imports (anywhere in it), `from x import y` giving
  both x and x.y (y may be a module or an attribute)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  is_package = path.endswith("__init__.py")
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from the module's own package upwards
        base = module.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
      else:
        source = node.module
      names.add(source)
      names.update(f"{source}.{alias.name}" for alias in node.names)
  return names


def import_graph(modules):
  """{module: set of the package's modules it runs when imported}."""
  graph = {}
  for module, path in modules.items():
    edges = set()
    for name in imported_names(module, path):
      parts = name.split(".")
      for end in range(1, len(parts) + 1):  # the packages above, and the module itself
        target = ".".join(parts[:end])
        if target in modules and target != module:
          edges.add(target)
    graph[module] = edges
  return graph


def find_cycle(graph):
  """One cycle as a list of modules (first repeated at the end), or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_the_package_has_no_import_cycles():
  modules = package_modules()
  assert {"vae_pipeline.config", "vae_pipeline.models.trainer", "vae_pipeline.models.vae",
          "vae_pipeline.models.local_workers", "vae_pipeline.data.sources"} <= set(modules)
  graph = import_graph(modules)
  assert "vae_pipeline.models.fast_layers" in graph["vae_pipeline.models.vae"]
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"b"}}, ["b", "b"]),
])
def test_the_cycle_finder_finds_cycles(graph, cycle):
  assert find_cycle(graph) == cycle


def test_a_function_level_import_back_is_a_cycle(tmp_path):
  (tmp_path / "one.py").write_text("from pkg import two\n")
  (tmp_path / "two.py").write_text("def later():\n  from pkg import one\n  return one\n")
  modules = {"pkg.one": str(tmp_path / "one.py"), "pkg.two": str(tmp_path / "two.py")}
  assert find_cycle(import_graph(modules)) == ["pkg.one", "pkg.two", "pkg.one"]


def folder_of(module, modules):
  """The top folder a module's file is in (pipeline/ for vae_pipeline's own modules)."""
  return os.path.relpath(modules[module], REPO).split(os.sep)[0]


def upward_imports(graph, modules):
  """(importer, imported) pairs where a folder imports a higher one (FOLDER_ORDER)."""
  rank = {folder: i for i, folder in enumerate(FOLDER_ORDER)}
  return sorted((module, target) for module, targets in graph.items() for target in targets
                if target != "vae_pipeline" and module != "vae_pipeline"
                and rank[folder_of(target, modules)] > rank[folder_of(module, modules)])


def test_every_package_folder_has_a_place_in_the_order():
  assert sorted(PACKAGE_DIRS.values()) == sorted(FOLDER_ORDER)


def test_folders_import_one_way():
  modules = package_modules()
  graph = import_graph(modules)
  assert {"vae_pipeline.cli.main", "vae_pipeline.client.use"} <= set(modules)
  assert upward_imports(graph, modules) == []


def test_an_import_from_a_higher_folder_is_found():
  modules = package_modules()
  graph = import_graph(modules)
  graph["vae_pipeline.models.vae"] = graph["vae_pipeline.models.vae"] | {"vae_pipeline.config"}
  assert upward_imports(graph, modules) == [("vae_pipeline.models.vae", "vae_pipeline.config")]
