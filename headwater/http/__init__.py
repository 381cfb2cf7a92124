"""The HTTP server core every Headwater daemon uses: HTTP/1.1 and HTTP/2, plain or TLS.

A daemon writes an ``App`` (``async def app(request) -> Response``) and runs ``serve``. The
names below are imported on first use (``headwater.lazy``): importing ``headwater.http.errors``
does not import the server.
"""

from headwater.lazy import lazy_exports

_EXPORTS = {
    "ClientDisconnected": ".errors", "HttpError": ".errors",
    "bind_socket": ".server", "error_response": ".server", "serve": ".server",
    "server_ssl_context": ".tls",
    "App": ".types", "BodyTooLarge": ".types", "FileBody": ".types", "Headers": ".types",
    "PreparedFields": ".types", "prepare_fields": ".h1",
    "Request": ".types", "RequestBody": ".types", "Response": ".types", "TlsSession": ".types",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
