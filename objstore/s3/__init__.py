"""The sans-IO S3 protocol layer: errors, SigV4, aws-chunked, XML, ranges, preconditions, names.

Nothing here touches a socket; the gateway feeds it headers and body bytes and sends what it
returns. Submodules: :mod:`.errors`, :mod:`.sigv4`, :mod:`.chunked`, :mod:`.checksums`,
:mod:`.xmlio`, :mod:`.ranges`, :mod:`.conditions`, :mod:`.names`.
"""

from . import checksums, chunked, conditions, errors, names, ranges, sigv4, xmlio
from .chunked import AwsChunkedDecoder
from .errors import S3Error, error_response
from .sigv4 import AuthResult, PayloadMode, PayloadVerifier, authenticate

__all__ = [
    "checksums", "chunked", "conditions", "errors", "names", "ranges", "sigv4", "xmlio",
    "AwsChunkedDecoder", "S3Error", "error_response", "AuthResult", "PayloadMode",
    "PayloadVerifier", "authenticate",
]
