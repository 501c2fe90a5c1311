"""pytest set-up: a headless Scipion environment in a temporary folder.

pyworkflow reads its configuration when first imported, so the environment is
configured here, before pytest imports any test module.
"""
import atexit
import os
import shutil
import tempfile

from cryohess_plugin.headless import configure_environment

_SCIPION_DIR = tempfile.mkdtemp(prefix="cryohess_scipion_")
configure_environment(_SCIPION_DIR, override=True)
if not os.environ.get("CRYOHESS_KEEP_TEST_DATA"):
    atexit.register(shutil.rmtree, _SCIPION_DIR, ignore_errors=True)
