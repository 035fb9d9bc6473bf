"""ecoq: a carbon-aware job scheduler.

`track` (``from ecoq import track``) is imported on first use, so ``import ecoq`` stays cheap
(not even `typing` is imported here).
"""

__version__ = "0.1.0"
__all__ = ["__version__", "track"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ecoq.track import track as track


def __getattr__(name: str) -> object:
    if name == "track":
        from ecoq.track import track

        # importing the submodule bound the package attribute `track` to the module; the
        # public name is the function
        globals()["track"] = track
        return track
    raise AttributeError(f"module 'ecoq' has no attribute {name!r}")
