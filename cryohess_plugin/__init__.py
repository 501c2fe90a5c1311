"""cryohess: five recent cryo-EM methods as a Scipion plugin.

The Scipion ``Plugin`` class is loaded on first access, so the numerical core
(``cryohess_plugin.core``) can be imported without pyworkflow or pwem.
"""
__version__ = "0.1.0"
_logo = "logo.png"
#: No package-wide references: pyworkflow lists them under every protocol's methods, and
#: each protocol cites the papers of its own method (its ``_references``/``_citations``).
_references = []


def __getattr__(name):
    if name == "Plugin":
        from .plugin import Plugin
        return Plugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
