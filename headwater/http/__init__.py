"""The HTTP server core every Headwater daemon uses: HTTP/1.1 and HTTP/2, plain or TLS.

A daemon writes an ``App`` (``async def app(request) -> Response``) and runs ``serve``.
"""

from headwater.http.errors import ClientDisconnected, HttpError
from headwater.http.server import bind_socket, error_response, serve
from headwater.http.tls import server_ssl_context
from headwater.http.types import App, BodyTooLarge, FileBody, Headers, Request, RequestBody, Response

__all__ = [
    "App", "BodyTooLarge", "ClientDisconnected", "FileBody", "Headers", "HttpError", "Request",
    "RequestBody", "Response", "bind_socket", "error_response", "serve", "server_ssl_context",
]
