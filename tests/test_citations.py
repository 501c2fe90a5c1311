"""Each protocol cites the papers of its own method: the keys exist in ``bibtex.py``, are
the ones its methods text cites, and the methods pane lists no other paper."""
import inspect
import re

import pwem
import pytest
from pyworkflow.utils import parseBibTex

from cryohess_plugin import bibtex
from cryohess_plugin.constants import (HETEROGENEITY_RIGID_REGION, SOURCE_PHANTOM,
                                       SOURCE_VOLUME)

ENTRIES = parseBibTex(bibtex.__doc__)
#: The method each protocol implements, by the papers that describe it.
EXPECTED = {
    'CryoHessProtAlignParticles': {'Rangan2022radial', 'Rangan2020factorization',
                                   'Ullrich2019differentiable'},
    'CryoHessProtAlignVolumes': {'Rangan2022radial'},
    'CryoHessProtSoftModes': {'Rangan2023hessian'},
    'CryoHessProtMicrographEM': {'Kreymer2023micrograph'},
    'CryoHessProtFourierPosterior': {'Ullrich2019differentiable'},
    'CryoHessProtRefinePoses': {'Ullrich2019differentiable'},
    'CryoHessProtHyperMolecule': {'Lederman2020hyper'},
}
#: Words of each paper's title that name its method.
TITLE_WORDS = {'Rangan2022radial': 'radial', 'Rangan2020factorization': 'translation kernel',
               'Rangan2023hessian': 'hessian', 'Kreymer2023micrograph': 'micrographs',
               'Ullrich2019differentiable': 'fourier', 'Lederman2020hyper': 'hyper-molecules'}


def _protocols():
    return {name: cls for name, cls in pwem.Domain.getProtocols().items()
            if name.startswith('CryoHessProt')}


def _citedInText(cls):
    """Keys cited as ``[Key]`` in the source of the protocol's own modules."""
    modules = {inspect.getmodule(base) for base in cls.__mro__
               if base.__module__.startswith('cryohess_plugin')}
    text = ''.join(inspect.getsource(module) for module in modules)
    return set(re.findall(r'\[([A-Z][A-Za-z]+\d{4}[a-z]+)\]', text)) & set(ENTRIES)


def test_every_protocol_has_its_expected_papers():
    assert set(_protocols()) == set(EXPECTED) | {'CryoHessProtSimulate'}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_protocol_cites_its_method(name):
    protocol = _protocols()[name]()
    keys = set(protocol._citations())
    assert keys == EXPECTED[name]
    assert keys <= set(ENTRIES)
    assert keys == _citedInText(type(protocol))
    for key in keys:
        assert TITLE_WORDS[key] in ENTRIES[key]['title'].lower().replace('\n', ' ')
    citations = protocol.citations()
    assert not any('Package references' in line for line in citations)
    assert len(citations) == 1 + len(keys)  # the heading and one line per paper


@pytest.mark.parametrize('settings, expected', [
    ({'source': SOURCE_PHANTOM}, set()),
    ({'source': SOURCE_VOLUME}, {'Ullrich2019differentiable'}),
    ({'heterogeneity': HETEROGENEITY_RIGID_REGION}, {'Lederman2020hyper'}),
    ({'doMicrographs': True}, {'Kreymer2023micrograph'}),
])
def test_simulation_cites_what_its_settings_use(settings, expected):
    protocol = _protocols()['CryoHessProtSimulate'](**settings)
    assert set(protocol._citations()) == expected
    assert set(protocol.citations()) and not any('Package references' in line
                                                 for line in protocol.citations())
