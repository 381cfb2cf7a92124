"""The origin's web page for people: viewers search, open a title and play it; creators sign in,
upload and follow their titles (:mod:`.site`; the page's files are in ``static/``)."""

from headwater.lazy import lazy_exports

# Names are imported on first use (headwater.lazy): reading this package's config
# does not load its servers.
_EXPORTS = {
    "WebSite": ".site",
}

__all__ = ["WebSite"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
