"""fazt-agent: the autonomous operator of a personal cloud server."""

import sys as _sys

__version__ = "0.1.0"


class _NoPydanticPlugins:
    """No third-party pydantic plugins in fazt-agent's processes.

    pydantic looks for plugins at its first model build (pydantic.plugin._loader scans every
    installed package's entry points), and a plugin it found would be handed every value the agent
    validates, secrets and tokens included. The scan alone imports importlib.metadata, email, zipfile
    and csv: ~2.7 MiB of the idle daemon's RSS and ~40 ms of every start. pydantic's own switch
    (PYDANTIC_DISABLE_PLUGINS) skips the scan but still imports all that, so this import hook gives
    pydantic, when it asks for its loader, one that finds none. pydantic asks the loader for
    `get_plugins()` alone (pydantic/plugin/_schema_validator.py); tests/test_import_budget.py checks
    that it still does.
    """

    NAME = "pydantic.plugin._loader"

    @classmethod
    def find_spec(cls, name: str, path: object = None, target: object = None) -> object:
        if name != cls.NAME:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(name, cls, origin=__name__)

    @staticmethod
    def create_module(spec: object) -> None:
        return None   # the default module object

    @staticmethod
    def exec_module(module: object) -> None:
        module.get_plugins = lambda: ()  # type: ignore[attr-defined]


if not any(finder is _NoPydanticPlugins or getattr(finder, "NAME", None) == _NoPydanticPlugins.NAME
           for finder in _sys.meta_path):
    _sys.meta_path.insert(0, _NoPydanticPlugins)  # type: ignore[arg-type]
