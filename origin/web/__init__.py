"""The origin's web page for people: viewers search, open a title and play it; creators sign in,
upload and follow their titles (:mod:`.site`; the page's files are in ``static/``)."""

from .site import WebSite

__all__ = ["WebSite"]
