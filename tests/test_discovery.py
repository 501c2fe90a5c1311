"""Scipion discovers the plugin, its protocols, viewers, menu and references.

A plugin with an import error is silently dropped by Scipion's Domain, so
these tests are the guard against a plugin that vanishes from the GUI.
"""
import importlib
import inspect
import pkgutil

import pwem
import pyworkflow as pw
import pytest
from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig
from pyworkflow.protocol import Protocol
from pyworkflow.utils import parseBibTex
from pyworkflow.viewer import DESKTOP_TKINTER, Viewer

import cryohess_plugin
from cryohess_plugin import bibtex
import cryohess_plugin.protocols as cryoProtocols
import cryohess_plugin.viewers as cryoViewers
from cryohess_plugin.viewers import CryoHessChimeraXViewer, CryoHessVolumeViewer

PROTOCOL_NAMES = [name for name, cls in inspect.getmembers(cryoProtocols, inspect.isclass)
                  if name.startswith('CryoHessProt')]
VIEWER_NAMES = [name for name, cls in inspect.getmembers(cryoViewers, inspect.isclass)
                if name.startswith('CryoHess') and name.endswith('Viewer')]
BIBTEX_KEYS = ['Rangan2022radial', 'Rangan2020factorization', 'Rangan2023hessian',
               'Kreymer2023micrograph', 'Ullrich2019differentiable', 'Lederman2020hyper']


def _menuValues(node):
    for child in node.childs:
        yield child.value
        yield from _menuValues(child)


def test_plugin_is_discovered():
    plugins = pwem.Domain.getPlugins()
    assert 'cryohess_plugin' in plugins
    plugin = pwem.Domain.getPluginModule('cryohess_plugin')
    assert issubclass(plugin.Plugin, pwem.Plugin)
    assert plugin.Plugin.validateInstallation() == []
    instance = plugin._pluginInstance
    assert instance.getName() == 'cryohess'
    assert instance.getPath() == cryohess_plugin.__path__[0]


def _definedClasses(package, base):
    """Names of the ``base`` subclasses defined in the modules of ``package``."""
    names = set()
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):
        loaded = importlib.import_module(module.name)
        names |= {name for name, cls in inspect.getmembers(loaded, inspect.isclass)
                  if issubclass(cls, base) and cls.__module__ == loaded.__name__}
    return names


def test_package_exports_protocols_and_viewers():
    assert 'CryoHessProtSimulate' in PROTOCOL_NAMES
    assert 'CryoHessSimulateViewer' in VIEWER_NAMES
    # Every protocol and viewer a module defines is exported, so Domain sees it.
    assert _definedClasses(cryoProtocols, Protocol) == set(PROTOCOL_NAMES)
    assert _definedClasses(cryoViewers, Viewer) == set(VIEWER_NAMES)


@pytest.mark.parametrize('name', PROTOCOL_NAMES)
def test_protocol_is_registered(name):
    protocol = pwem.Domain.getProtocols()[name]
    assert protocol is getattr(cryoProtocols, name)
    assert protocol.__module__.startswith('cryohess_plugin.protocols.')
    assert protocol._label and protocol.__doc__


@pytest.mark.parametrize('name', VIEWER_NAMES)
def test_viewer_is_registered(name):
    viewer = pwem.Domain.getViewers()[name]
    assert viewer is getattr(cryoViewers, name)
    # What the GUI asks when a protocol's results, or one of its output maps, are opened.
    for target in viewer._targets:
        if target.__name__ in PROTOCOL_NAMES:
            assert viewer in pwem.Domain.findViewers(target.getClassName(), DESKTOP_TKINTER)
        else:
            assert viewer in (CryoHessVolumeViewer, CryoHessChimeraXViewer)
            assert viewer in pwem.Domain.findViewers(target(), DESKTOP_TKINTER)


def test_every_protocol_is_in_the_menu():
    tree = ProtocolTreeConfig.load(pwem.Domain, pw.Config.SCIPION_PROTOCOLS)
    values = set(_menuValues(tree['Protocols SPA']))
    assert set(PROTOCOL_NAMES) <= values


def test_every_protocol_is_also_in_a_standard_group():
    """Besides our own section, each protocol is where pwem's menu puts its kind of work."""
    tree = ProtocolTreeConfig.load(pwem.Domain, pw.Config.SCIPION_PROTOCOLS)
    standard = [child for child in tree['Protocols SPA'].childs if child.text != 'cryohess']
    values = {value for section in standard for value in _menuValues(section)}
    assert set(PROTOCOL_NAMES) <= values


def test_bibtex_keys_parse():
    entries = parseBibTex(bibtex.__doc__)
    assert list(entries) == BIBTEX_KEYS
    for entry in entries.values():
        assert entry['author'] and entry['title'] and entry['year']
    assert set(cryohess_plugin._references) <= set(entries)
    pwem.Domain.getPlugins()
    assert set(BIBTEX_KEYS) <= set(cryohess_plugin._bibtex)


def test_protocol_citations_resolve():
    entries = parseBibTex(bibtex.__doc__)
    for name in PROTOCOL_NAMES:
        protocol = pwem.Domain.getProtocols()[name]()
        assert set(protocol._citations()) <= set(entries)
