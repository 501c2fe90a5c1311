"""The layers of the plugin: the numerical core runs without Scipion, and no module imports
a layer above its own or takes part in an import cycle.

Layers, lowest first: the core (``cryohess_plugin.core``); the shared names
(``constants``, ``headless``, ``bibtex``); the Scipion bridge (``convert``, ``plugin`` and
the package itself, ``chimerax``); ``protocols``; ``viewers`` and ``wizards``; the ``demo``; the
``tests``.  Inside the
core, the numba hot loops live in ``kernels``, which import nothing of the core but
``errors``, the root modules (shared conventions) import no method subpackage, and a method subpackage imports no other one (so
``synthetic``, the simulator, is used by nobody in the core).  Imports are read from every
module's source (also the ones inside functions); a package's implicit import of its
parent's ``__init__`` is not an edge.  No test module imports another: what tests share
lives in helper modules (``helpers``, ``alignment_data``, ``method_data``,
``scipion_data``, ...).
"""
import ast
import importlib.util
import os
import subprocess
import sys

SCRIPT = """
import sys
sys.modules['pwem'] = None
sys.modules['pyworkflow'] = None
import numpy as np
import cryohess_plugin.core.synthetic.atoms, cryohess_plugin.core.ctf, cryohess_plugin.core.mrc
from cryohess_plugin.core.synthetic import phantoms, simulate
sim = simulate.simulate_particles(phantoms.random_protein_phantom(50, 8.0), 3, 16, 2.0,
                                  backend="cpu")
assert sim.images.shape == (3, 16, 16)
assert not any(name.split('.')[0] in ('pwem', 'pyworkflow') for name, module in
               sys.modules.items() if module is not None)
"""

PLUGIN = "cryohess_plugin"
CORE = PLUGIN + ".core"
KERNELS = CORE + ".kernels"
#: Rank of each layer: a module may import modules of its own rank or below.
LAYERS = {CORE: 0, PLUGIN + ".constants": 1, PLUGIN + ".headless": 1, PLUGIN + ".bibtex": 1,
          PLUGIN: 2, PLUGIN + ".convert": 2, PLUGIN + ".plugin": 2,
          PLUGIN + ".protocols": 3, PLUGIN + ".viewers": 4, PLUGIN + ".wizards": 4,
          PLUGIN + ".demo": 5,
          PLUGIN + ".tests": 6}
TESTS = PLUGIN + ".tests"
#: Packages Scipion provides, which the core must never import.
SCIPION = ("pwem", "pyworkflow")


def module_sources():
    """``{module name: (source, is package)}`` of every module of the plugin."""
    sources = {}
    for package in (PLUGIN, PLUGIN + ".protocols", PLUGIN + ".viewers", PLUGIN + ".tests"):
        root = importlib.util.find_spec(package).submodule_search_locations[0]
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = [name for name in subfolders
                             if os.path.isfile(os.path.join(folder, name, "__init__.py"))]
            parts = os.path.relpath(folder, root).split(os.sep)
            prefix = ".".join([package] + [part for part in parts if part != "."])
            if prefix != package and prefix in {PLUGIN + ".protocols", PLUGIN + ".viewers",
                                                PLUGIN + ".tests"}:
                continue  # reached through its own package_dir
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(folder, name), encoding="utf-8") as handle:
                        is_package = name == "__init__.py"
                        module = prefix if is_package else prefix + "." + name[:-3]
                        sources[module] = (handle.read(), is_package)
    return sources


def import_graph(sources):
    """``{module: [(imported module, line)]}``: each import resolved to the most specific
    module it names (``from a import b`` is ``a.b`` when that is a module, else ``a``)."""
    graph = {}
    for module, (source, is_package) in sources.items():
        here = module.split(".") if is_package else module.split(".")[:-1]
        edges = []
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                edges += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    target = base + "." + alias.name
                    edges.append((target if target in sources else base, node.lineno))
        graph[module] = edges
    return graph


def layer(module):
    """Rank of the layer of a plugin module (its longest prefix in :data:`LAYERS`)."""
    owners = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return LAYERS[max(owners, key=len)]


def method_package(module):
    """The core method subpackage a module belongs to, or None (root, kernels, outside)."""
    parts = module.split(".")
    if module.startswith(CORE + ".") and not module.startswith(KERNELS) and len(parts) > 3:
        return parts[2]
    return None


def is_core_root(module, sources):
    parts = module.split(".")
    return module == CORE or (len(parts) == 3 and module.startswith(CORE + ".")
                              and not sources[module][1])


def layering_violations(sources):
    """Every import that breaks the layering, as ``module:line imports target (rule)``."""
    found = []
    for module, edges in import_graph(sources).items():
        for target, line in edges:
            where = "%s:%d imports %s" % (module, line, target)
            top = target.split(".")[0]
            if module.startswith(CORE) and top in SCIPION:
                found.append(where + " (the core never imports Scipion)")
            if module.startswith(CORE) and not module.startswith(KERNELS) and top == "numba":
                found.append(where + " (numba hot loops live in kernels)")
            if top != PLUGIN:
                continue
            if layer(target) > layer(module):
                found.append(where + " (a higher layer)")
            if module.startswith(KERNELS) and not (target.startswith(KERNELS)
                                                   or target == CORE + ".errors"):
                found.append(where + " (kernels import only kernels and errors)")
            target_method = method_package(target)
            if target_method and is_core_root(module, sources):
                found.append(where + " (a core root module imports a method subpackage)")
            if target_method and method_package(module) not in (None, target_method):
                found.append(where + " (a method subpackage imports another one)")
    return found


def is_test_module(module):
    return module.startswith(TESTS + ".") and module.rsplit(".", 1)[1].startswith("test_")


def imports_between_test_modules(sources):
    """Every import of a ``test_*`` module by another one, as ``module:line imports target``."""
    return sorted({"%s:%d imports %s" % (module, line, target)
                   for module, edges in import_graph(sources).items() if is_test_module(module)
                   for target, line in edges if is_test_module(target)})


def import_cycles(sources):
    """The strongly connected groups of more than one module (Tarjan)."""
    graph = {module: sorted({target for target, _ in edges if target in sources} - {module})
             for module, edges in import_graph(sources).items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_core_runs_with_scipion_blocked():
    subprocess.run([sys.executable, "-c", SCRIPT], check=True)


def test_every_layer_and_package_is_found():
    sources = module_sources()
    for name in (CORE + ".fourier", KERNELS + ".fourier_cpu", CORE + ".synthetic.simulate",
                 PLUGIN + ".convert", PLUGIN + ".protocols.protocol_simulate",
                 PLUGIN + ".viewers.viewer_simulate", PLUGIN + ".demo",
                 PLUGIN + ".tests.test_core_isolation"):
        assert name in sources
    assert {method_package(name) for name in sources} >= {
        None, "alignment", "softmodes", "posterior", "synthetic"}


def test_no_import_goes_up_a_layer_or_across_methods():
    assert layering_violations(module_sources()) == []


def test_there_is_no_import_cycle():
    assert import_cycles(module_sources()) == []


def test_the_checks_catch_forbidden_imports():
    sources = module_sources()

    def add(module, lines):
        source, is_package = sources[module]
        sources[module] = (source + "\n" + lines + "\n", is_package)

    add(CORE + ".fourier", "import pwem\nfrom cryohess_plugin import convert\n"
                           "from .synthetic import simulate")
    add(KERNELS + ".fourier_cpu", "from .. import rotations\nfrom ..fourier import fft2")
    add(CORE + ".alignment.volumes", "from ..softmodes import analysis\nimport numba")
    add(PLUGIN + ".convert", "from cryohess_plugin.protocols import protocol_base")
    add(PLUGIN + ".protocols.protocol_simulate",
        "from cryohess_plugin.viewers import plotting")
    found = "\n".join(layering_violations(sources))
    for expected in ("core.fourier:", "never imports Scipion",
                     "imports cryohess_plugin.convert",
                     "imports cryohess_plugin.core.synthetic.simulate (a core root module",
                     "kernels.fourier_cpu:", "imports cryohess_plugin.core.rotations (kernels",
                     "imports cryohess_plugin.core.softmodes.analysis (a method subpackage",
                     "imports numba (numba hot loops live in kernels)",
                     "convert:", "imports cryohess_plugin.protocols.protocol_base (a higher",
                     "imports cryohess_plugin.viewers.plotting (a higher layer)"):
        assert expected in found, expected
    assert any({CORE + ".fourier", KERNELS + ".fourier_cpu"} <= set(group)
               for group in import_cycles(sources))


def test_no_test_module_imports_another():
    assert imports_between_test_modules(module_sources()) == []


def test_the_test_module_check_catches_an_import():
    sources = module_sources()
    source, is_package = sources[TESTS + ".test_polar_cuda"]
    sources[TESTS + ".test_polar_cuda"] = (
        source + "\nfrom .test_polar import landscape\nfrom . import test_ctf\n"
                 "from .helpers import relative_l2\n", is_package)
    found = imports_between_test_modules(sources)
    assert len(found) == 2
    assert all(line.startswith(TESTS + ".test_polar_cuda:") for line in found)
    assert {line.rsplit(" ", 1)[1] for line in found} == {TESTS + ".test_polar",
                                                          TESTS + ".test_ctf"}
