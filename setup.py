"""Packaging of the cryohess Scipion plugin.

The repository keeps ``protocols/``, ``viewers/`` and ``tests/`` at the top
level; ``package_dir`` installs them as ``cryohess_plugin.protocols``,
``cryohess_plugin.viewers`` and ``cryohess_plugin.tests``.
"""
from setuptools import setup

PACKAGES = {
    "cryohess_plugin": "cryohess_plugin",
    "cryohess_plugin.core": "cryohess_plugin/core",
    "cryohess_plugin.core.kernels": "cryohess_plugin/core/kernels",
    "cryohess_plugin.core.synthetic": "cryohess_plugin/core/synthetic",
    "cryohess_plugin.core.alignment": "cryohess_plugin/core/alignment",
    "cryohess_plugin.core.softmodes": "cryohess_plugin/core/softmodes",
    "cryohess_plugin.core.posterior": "cryohess_plugin/core/posterior",
    "cryohess_plugin.core.micrograph_em": "cryohess_plugin/core/micrograph_em",
    "cryohess_plugin.protocols": "protocols",
    "cryohess_plugin.viewers": "viewers",
    "cryohess_plugin.tests": "tests",
}

setup(
    name="scipion-em-cryohess",
    version="0.1.0",
    description="Scipion plugin: radial-SVD alignment, Hessian soft modes, micrograph EM, "
                "differentiable Fourier-slice posteriors and hyper-molecules",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={"cryohess_plugin": ["protocols.conf"]},
    install_requires=[
        "scipion-pyworkflow>=3.11",
        "scipion-em>=3.11",
        "numpy",
        "scipy",
        "numba>=0.58",
        "mrcfile",
        "biopython",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=7", "scipion-em-relion"],
        "gpu": [],
    },
    entry_points={"pyworkflow.plugin": ["cryohess_plugin = cryohess_plugin"]},
    classifiers=["Programming Language :: Python :: 3",
                 "Topic :: Scientific/Engineering :: Bio-Informatics"],
)
