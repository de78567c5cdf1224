"""Pytest fixtures that point the real ``huggingface_hub`` / ``datasets`` clients at ``tests.support.hub_server``.

Use from a test module (there is no shared conftest for this)::

    from tests.support.hub_fixture import hub_env, hub_server  # noqa: F401  (pytest fixtures)

    def test_push(hub_env):
        repo_id = hub_env.new_repo_id("model")          # "tester/model-3", unique in the session
        HfApi().create_repo(repo_id)                     # endpoint and token come from the patched env
        hub_env.server.drop_lfs_uploads(1)               # fault injection, see HubServer

* ``hub_server`` (session scope): one ``HubServer`` on 127.0.0.1 with a random port, storage in a tmp folder.
* ``hub_env`` (function scope): a ``HubEnv`` with ``endpoint``, ``token``, ``server``, a fresh tmp
  ``HF_HOME`` (hub cache, datasets cache, token path inside it) and ``environ`` (the variables to hand to a
  subprocess). On teardown every patch is undone and pending faults are cleared.

Why the patching: both libraries read ``HF_ENDPOINT`` (and the cache folders, ``HF_HUB_DISABLE_XET``) into
module constants **at import time**, and ``huggingface_hub.hf_api.api`` (behind the module-level
functions such as ``create_repo``) copies the endpoint when it is built. Other test modules may import the
libraries before this fixture runs, so setting environment variables is not enough. ``hub_env`` therefore
sets the environment variables (for subprocesses and for any late import) *and* monkeypatches the
import-time constants listed in ``_patch_clients`` (checked against huggingface_hub 2.4 / datasets 5.2).
A test that wants a pristine process instead runs its client code with
``subprocess.run([...], env=hub_env.environ)``; there the variables are read at import as usual.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.hub_server import USER, HubServer

TOKEN = "hf_test_token_for_the_local_hub"
_repo_counter = itertools.count(1)


@dataclass(frozen=True)
class HubEnv:
    """What a test needs to talk to the local Hub; the clients are already pointed at it."""

    endpoint: str
    token: str
    user: str
    home: Path  # tmp HF_HOME of this test (hub cache in home/"hub", datasets cache in home/"datasets")
    server: HubServer
    environ: dict[str, str] = field(repr=False)  # full environment for a subprocess client

    def new_repo_id(self, prefix: str = "repo") -> str:
        """A repo id under the test user that no other test of the session uses."""
        return f"{self.user}/{prefix}-{next(_repo_counter)}"


def _hub_caches(home: Path) -> dict[str, str]:
    """huggingface_hub's home and caches under ``home``: one layout for the variables and the patch."""
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_ASSETS_CACHE": str(home / "assets")}


def hub_variables(endpoint: str, home: Path, token: str = TOKEN) -> dict[str, str]:
    """Environment variables that point both clients at ``endpoint`` with caches under ``home``."""
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_XET": "1",  # the test server speaks plain LFS, not Xet
        "HF_TOKEN": token,
        **_hub_caches(home),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_MODULES_CACHE": str(home / "modules"),
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
    }


def _patch_clients(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """Rewrite the import-time constants of huggingface_hub and datasets (see module docstring)."""
    import datasets.config as dconf
    import huggingface_hub.constants as hconst
    import huggingface_hub.hf_api as hf_api
    from huggingface_hub import HfFileSystem

    for name, value in {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": hconst.HF_URL_HOSTS | {urlsplit(endpoint).hostname},
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        **_hub_caches(home),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }.items():
        monkeypatch.setattr(hconst, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)

    datasets_cache = home / "datasets"
    for name, value in {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_CACHE_HOME": str(home),
        "HF_DATASETS_CACHE": datasets_cache,
        "HF_MODULES_CACHE": home / "modules",
        "DOWNLOADED_DATASETS_PATH": datasets_cache / dconf.DOWNLOADED_DATASETS_DIR,
        "EXTRACTED_DATASETS_PATH": datasets_cache
        / dconf.DOWNLOADED_DATASETS_DIR
        / dconf.EXTRACTED_DATASETS_DIR,
    }.items():
        monkeypatch.setattr(dconf, name, value)

    # fsspec keeps HfFileSystem instances (and their directory listings) per constructor arguments.
    HfFileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """One local Hub for the whole session (repos persist across tests: use ``HubEnv.new_repo_id``)."""
    server = HubServer(tmp_path_factory.mktemp("hub_storage")).start()
    yield server
    server.stop()


@pytest.fixture
def hub_env(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEnv]:
    """Point both clients at ``hub_server`` with a token and a fresh tmp cache; undone on teardown."""
    home = tmp_path / "hf_home"
    home.mkdir()
    # Import first, so that monkeypatch records (and restores) the values the session had before this test.
    import datasets.config  # noqa: F401
    import huggingface_hub  # noqa: F401

    variables = hub_variables(hub_server.endpoint, home)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    _patch_clients(monkeypatch, hub_server.endpoint, home)
    yield HubEnv(
        endpoint=hub_server.endpoint,
        token=TOKEN,
        user=USER,
        home=home,
        server=hub_server,
        environ={**os.environ, **variables},
    )
    hub_server.clear_faults()
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()
