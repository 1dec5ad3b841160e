"""Third-party backends: the entry point group ``d2lgru.backends``.

A package registers a backend in its ``pyproject.toml``::

    [project.entry-points."d2lgru.backends"]
    mybackend = "my_package.d2lgru_backend:MyBackend"   # a Backend subclass or instance

Discovery reads the installed packages' metadata only (no plugin is imported until its
backend is asked for). A plugin that cannot be used -- its import fails, its object is no
``Backend``, its name is a built-in backend's or alias, two packages claim one name -- is
reported by name and package in one :class:`~d2lgru.errors.BackendPluginError`, and never
affects the built-in backends or the other plugins.
"""

from __future__ import annotations

import dataclasses

from ..errors import BackendPluginError

GROUP = "d2lgru.backends"


@dataclasses.dataclass(frozen=True)
class Plugin:
    name: str      # the backend's name: the entry point's, lower-cased
    value: str     # "module:attribute"
    package: str   # the distribution that declares it
    version: str
    #: why it cannot be used, found without importing it (a name clash); None when fine
    problem: str | None = None

    @property
    def source(self) -> str:
        return f"plugin {self.value} from {self.package} {self.version}"


_found: dict[str, Plugin] | None = None


def plugins(reserved=()) -> dict[str, Plugin]:
    """Every declared plugin by name, usable or not (see :attr:`Plugin.problem`); read once per
    process. ``reserved``: the built-in names and aliases a plugin may not take."""
    global _found
    if _found is None:
        _found = _discover(set(reserved))
    return _found


def _discover(reserved: set) -> dict[str, Plugin]:
    from importlib.metadata import entry_points
    found: dict[str, Plugin] = {}
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        package = getattr(dist, "name", None) or "an unknown package"
        version = getattr(dist, "version", None) or "?"
        name = ep.name.strip().lower()
        plugin = Plugin(name, ep.value, package, version)
        if name in reserved:
            plugin = dataclasses.replace(plugin, problem=(
                f"the name {name!r} is a built-in backend's or alias; the plugin must choose "
                f"another name"))
        elif name in found and found[name].package != package:
            other = found[name]
            plugin = dataclasses.replace(plugin, problem=(
                f"both {other.package} and {package} declare a backend named {name!r}; "
                f"uninstall one of them"))
        found[name] = plugin
    return found


def load(plugin: Plugin, backend_class: type):
    """The plugin's backend instance; :class:`BackendPluginError` naming the package else."""
    where = f"backend {plugin.name!r} (entry point {plugin.value} of {plugin.package} " \
            f"{plugin.version})"
    if plugin.problem:
        raise BackendPluginError(f"{where} cannot be used: {plugin.problem}")
    from importlib.metadata import EntryPoint
    try:
        obj = EntryPoint(plugin.name, plugin.value, GROUP).load()
    except Exception as exc:  # whatever a third party's import raises, it is theirs
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise BackendPluginError(f"{where} failed to import ({type(exc).__name__}: "
                                 f"{first_line}); fix or uninstall {plugin.package}") from exc
    if isinstance(obj, type) and issubclass(obj, backend_class):
        try:
            obj = obj()
        except Exception as exc:
            raise BackendPluginError(f"{where} could not be created ({type(exc).__name__}: "
                                     f"{exc}); fix or uninstall {plugin.package}") from exc
    if not isinstance(obj, backend_class):
        raise BackendPluginError(f"{where} is a {type(obj).__name__}, not a d2lgru Backend "
                                 f"(a subclass of d2lgru.backends.Backend or an instance of one)")
    if obj.name != plugin.name:
        raise BackendPluginError(f"{where} calls itself {obj.name!r}; its Backend.name must be "
                                 f"the entry point's name {plugin.name!r}")
    if not obj.impls:
        raise BackendPluginError(f"{where} declares no implementations (Backend.impls is empty)")
    return obj
