"""Packaging of the cryohess Scipion plugin.

The repository keeps ``protocols/``, ``viewers/`` and ``tests/`` at the top
level; ``package_dir`` installs them as ``cryohess_plugin.protocols``,
``cryohess_plugin.viewers`` and ``cryohess_plugin.tests``.
"""
import re

from setuptools import find_packages, setup

#: The version is written once, in the package.
VERSION = re.search(r'^__version__ = "([^"]+)"', open("cryohess_plugin/__init__.py").read(),
                    re.MULTILINE).group(1)

PACKAGES = {name: name.replace(".", "/")
            for name in find_packages(include=["cryohess_plugin", "cryohess_plugin.*"])}
PACKAGES.update({
    "cryohess_plugin.protocols": "protocols",
    "cryohess_plugin.viewers": "viewers",
    "cryohess_plugin.tests": "tests",
})

setup(
    name="scipion-em-cryohess",
    version=VERSION,
    license="GPL-3.0-or-later",
    url="https://pypi.org/project/scipion-em-cryohess/",
    description="Scipion plugin: radial-SVD alignment, Hessian soft modes, micrograph EM, "
                "differentiable Fourier-slice posteriors and hyper-molecules",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={"cryohess_plugin": ["protocols.conf", "logo.png", "templates/*.json.template"]},
    install_requires=[
        "scipion-pyworkflow>=3.11",
        "scipion-em>=3.11",
        "numpy",
        "scipy",
        "numba>=0.58",
        "mrcfile",
        "biopython",
        "matplotlib",
        "threadpoolctl",
    ],
    extras_require={
        "test": ["pytest>=7", "scipion-em-relion"],
        # numba's maintained CUDA target with NVIDIA's CUDA 12 libraries as wheels:
        # a node with only the NVIDIA driver needs no toolkit.
        "gpu": ["numba-cuda[cu12]"],
    },
    entry_points={"pyworkflow.plugin": ["cryohess_plugin = cryohess_plugin"]},
    classifiers=["Programming Language :: Python :: 3",
                 "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)",
                 "Topic :: Scientific/Engineering :: Bio-Informatics"],
)
