"""Environment for running Scipion projects without the Scipion launcher.

pyworkflow reads its configuration from environment variables when it is
first imported, so :func:`configure_environment` must run before any
``pyworkflow`` or ``pwem`` import.  Variables that are already set are kept,
unless asked otherwise, so an installed Scipion keeps its own configuration.
"""
import os
import sys


def configure_environment(base_dir, override=False):
    """Point Scipion at ``base_dir`` for configuration and project data.

    Sets ``SCIPION_HOME`` (``base_dir/scipion_home``, with a basic
    ``config/hosts.conf``), ``SCIPION_USER_DATA`` (``base_dir``, projects go
    to ``base_dir/projects``), ``SCIPION_DOMAIN=pwem``, ``SCIPION_PYTHON`` (this
    interpreter, which runs the protocols in subprocesses),
    ``SCIPION_TEST_NOSYNC=1`` and ``MPLBACKEND=Agg``.

    :param base_dir: folder for Scipion data; created if missing.
    :param override: replace variables that are already set (isolated test
        sessions); by default they are kept.
    :returns: the project folder ``SCIPION_USER_DATA/projects``.
    """
    base_dir = os.path.abspath(base_dir)
    defaults = {
        "SCIPION_HOME": os.path.join(base_dir, "scipion_home"),
        "SCIPION_USER_DATA": base_dir,
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_PYTHON": sys.executable,
        "SCIPION_TEST_NOSYNC": "1",
        "SCIPION_NOTIFY": "False",
        "MPLBACKEND": "Agg",
    }
    for name, value in defaults.items():
        if override or name not in os.environ:
            os.environ[name] = value
    hosts = os.path.join(os.environ["SCIPION_HOME"], "config", "hosts.conf")
    if not os.path.exists(hosts):
        os.makedirs(os.path.dirname(hosts), exist_ok=True)
        from pyworkflow.protocol import HostConfig
        HostConfig.writeBasic(hosts)
    return os.path.join(os.environ["SCIPION_USER_DATA"], "projects")
