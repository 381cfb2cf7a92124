"""S3 errors: one exception root, each subclass carrying its wire code and HTTP status.

Raise a subclass anywhere in the S3 path; the gateway turns it into a response in one place with
:func:`error_response`. Extra keyword arguments become extra elements of the XML error document
(``BucketName``, ``Key``, ``ActualObjectSize``, ...), in the order given.
"""

from __future__ import annotations

import re

from ..errors import StoreError

__all__ = [
    "S3Error", "error_response", "xml_text", "xml_forbidden", "ERRORS_BY_CODE",
    # 403
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "RequestTimeTooSkewed",
    "InvalidObjectState", "InvalidChunkSizeError",
    # 400
    "AuthorizationHeaderMalformed", "AuthorizationQueryParametersError", "MissingSecurityHeader",
    "InvalidBucketName", "KeyTooLongError", "InvalidArgument", "InvalidRequest", "BadDigest",
    "InvalidDigest", "XAmzContentSHA256Mismatch", "EntityTooSmall", "EntityTooLarge",
    "IncompleteBody", "InvalidPart", "InvalidPartOrder", "MalformedXML", "MalformedPOSTRequest",
    "MaxPostPreDataLengthExceededError",
    "MetadataTooLarge", "TooManyBuckets", "MissingRequestBodyError", "InvalidLocationConstraint",
    "IllegalLocationConstraintException", "RequestTimeout", "InvalidStorageClass", "InvalidURI",
    "InvalidToken", "ExpiredToken", "InvalidEncryptionAlgorithmError", "MaxMessageLengthExceeded",
    "UnexpectedContent", "InvalidTag", "IllegalVersioningConfigurationException",
    "RequestHeaderSectionTooLarge", "InvalidPolicyDocument", "UnresolvableGrantByEmailAddress",
    "AccessControlListNotSupported", "InvalidBucketAclWithObjectOwnership", "MalformedACLError",
    # 404
    "NoSuchBucket", "NoSuchKey", "NoSuchUpload", "NoSuchVersion", "NoSuchBucketPolicy",
    "NoSuchTagSet", "NoSuchCORSConfiguration", "NoSuchLifecycleConfiguration",
    "ServerSideEncryptionConfigurationNotFoundError", "NoSuchObjectLockConfiguration",
    "NoSuchWebsiteConfiguration", "ReplicationConfigurationNotFoundError", "ObjectLockConfigurationNotFoundError",
    # others
    "BucketAlreadyExists", "BucketAlreadyOwnedByYou", "BucketNotEmpty", "OperationAborted",
    "ConditionalRequestConflict", "InvalidRange", "InvalidPartNumber", "PreconditionFailed", "NotModified",
    "MethodNotAllowed", "NotImplemented", "MissingContentLength", "InternalError",
    "ServiceUnavailable", "SlowDown",
]


class S3Error(StoreError):
    """Root of every S3 error. ``code`` is the S3 error code, ``http_status`` its status.

    Already in wire form, so the gateway answers it as it is and does not log it.

    ``resource`` overrides the resource the gateway reports; ``headers`` are extra response
    headers (e.g. ``Retry-After``); any other keyword becomes an XML element of the error body.
    """

    code: str = "InternalError"
    http_status: int = 500
    log_level = None
    default_message: str = "We encountered an internal error. Please try again."

    def __init__(self, message: str | None = None, *, resource: str | None = None,
                 headers: list[tuple[str, str]] | None = None, **extra: object) -> None:
        self.message = message or self.default_message
        self.resource = resource
        self.headers: list[tuple[str, str]] = list(headers or ())
        self.extra: dict[str, object] = {k: v for k, v in extra.items() if v is not None}
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


def _error(name: str, status: int, message: str) -> type[S3Error]:
    return type(name, (S3Error,), {"code": name, "http_status": status, "default_message": message,
                                   "__doc__": f"{name} ({status}): {message}", "__module__": __name__})


# Declared one per line so the table reads like the S3 error-code reference.
AccessDenied = _error("AccessDenied", 403, "Access Denied")
InvalidAccessKeyId = _error("InvalidAccessKeyId", 403,
                            "The AWS Access Key Id you provided does not exist in our records.")
SignatureDoesNotMatch = _error("SignatureDoesNotMatch", 403,
                               "The request signature we calculated does not match the signature "
                               "you provided. Check your key and signing method.")
RequestTimeTooSkewed = _error("RequestTimeTooSkewed", 403,
                              "The difference between the request time and the current time is too large.")
InvalidObjectState = _error("InvalidObjectState", 403,
                            "The operation is not valid for the object's storage class")
InvalidChunkSizeError = _error("InvalidChunkSizeError", 403,
                               "Only the last chunk is allowed to have a size less than 8192 bytes")

AuthorizationHeaderMalformed = _error("AuthorizationHeaderMalformed", 400,
                                      "The authorization header is malformed.")
AuthorizationQueryParametersError = _error("AuthorizationQueryParametersError", 400,
                                           "Error parsing the X-Amz-Credential parameter.")
MissingSecurityHeader = _error("MissingSecurityHeader", 400,
                               "Your request is missing a required header.")
InvalidBucketName = _error("InvalidBucketName", 400, "The specified bucket is not valid.")
KeyTooLongError = _error("KeyTooLongError", 400, "Your key is too long")
InvalidArgument = _error("InvalidArgument", 400, "Invalid Argument")
InvalidRequest = _error("InvalidRequest", 400, "Invalid Request")
BadDigest = _error("BadDigest", 400, "The Content-MD5 you specified did not match what we received.")
InvalidDigest = _error("InvalidDigest", 400, "The Content-MD5 you specified is not valid.")
XAmzContentSHA256Mismatch = _error("XAmzContentSHA256Mismatch", 400,
                                   "The provided 'x-amz-content-sha256' header does not match what was computed.")
EntityTooSmall = _error("EntityTooSmall", 400,
                        "Your proposed upload is smaller than the minimum allowed object size.")
EntityTooLarge = _error("EntityTooLarge", 400,
                        "Your proposed upload exceeds the maximum allowed object size.")
IncompleteBody = _error("IncompleteBody", 400,
                        "You did not provide the number of bytes specified by the Content-Length HTTP header")
InvalidPart = _error("InvalidPart", 400,
                     "One or more of the specified parts could not be found. The part may not have "
                     "been uploaded, or the specified entity tag may not match the part's entity tag.")
InvalidPartOrder = _error("InvalidPartOrder", 400,
                          "The list of parts was not in ascending order. The parts list must be "
                          "specified in order by part number.")
MalformedXML = _error("MalformedXML", 400,
                      "The XML you provided was not well-formed or did not validate against our "
                      "published schema.")
MalformedPOSTRequest = _error("MalformedPOSTRequest", 400,
                              "The body of your POST request is not well-formed multipart/form-data.")
MaxPostPreDataLengthExceededError = _error("MaxPostPreDataLengthExceededError", 400,
                                           "Your POST request fields preceding the upload file were too large.")
MetadataTooLarge = _error("MetadataTooLarge", 400,
                          "Your metadata headers exceed the maximum allowed metadata size.")
TooManyBuckets = _error("TooManyBuckets", 400, "You have attempted to create more buckets than allowed.")
MissingRequestBodyError = _error("MissingRequestBodyError", 400, "Request Body is empty")
InvalidLocationConstraint = _error("InvalidLocationConstraint", 400,
                                   "The specified location constraint is not valid.")
IllegalLocationConstraintException = _error(
    "IllegalLocationConstraintException", 400,
    "The location constraint specified is incompatible with the region this request was sent to.")
RequestTimeout = _error("RequestTimeout", 400,
                        "Your socket connection to the server was not read from or written to "
                        "within the timeout period.")
InvalidStorageClass = _error("InvalidStorageClass", 400, "The storage class you specified is not valid.")
InvalidURI = _error("InvalidURI", 400, "Couldn't parse the specified URI.")
InvalidToken = _error("InvalidToken", 400, "The provided token is malformed or otherwise invalid.")
ExpiredToken = _error("ExpiredToken", 400, "The provided token has expired.")
InvalidEncryptionAlgorithmError = _error("InvalidEncryptionAlgorithmError", 400,
                                         "The encryption request you specified is not valid.")
MaxMessageLengthExceeded = _error("MaxMessageLengthExceeded", 400, "Your request was too big.")
UnexpectedContent = _error("UnexpectedContent", 400, "This request does not support content.")
InvalidTag = _error("InvalidTag", 400, "The tag provided was not a valid tag.")
IllegalVersioningConfigurationException = _error(
    "IllegalVersioningConfigurationException", 400,
    "The versioning configuration specified in the request is invalid.")
RequestHeaderSectionTooLarge = _error("RequestHeaderSectionTooLarge", 400,
                                      "Your request header section exceeds the maximum allowed size.")
InvalidPolicyDocument = _error("InvalidPolicyDocument", 400,
                               "The content of the form does not meet the conditions specified in the policy document.")
UnresolvableGrantByEmailAddress = _error("UnresolvableGrantByEmailAddress", 400,
                                         "The email address you provided does not match any account on record.")
AccessControlListNotSupported = _error("AccessControlListNotSupported", 400, "The bucket does not allow ACLs")
InvalidBucketAclWithObjectOwnership = _error("InvalidBucketAclWithObjectOwnership", 400,
                                             "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting")
MalformedACLError = _error("MalformedACLError", 400,
                           "The XML you provided was not well-formed or did not validate against our published schema.")

NoSuchBucket = _error("NoSuchBucket", 404, "The specified bucket does not exist")
NoSuchKey = _error("NoSuchKey", 404, "The specified key does not exist.")
NoSuchUpload = _error("NoSuchUpload", 404,
                      "The specified upload does not exist. The upload ID may be invalid, or the "
                      "upload may have been aborted or completed.")
NoSuchVersion = _error("NoSuchVersion", 404,
                       "The version ID specified in the request does not match an existing version.")
NoSuchBucketPolicy = _error("NoSuchBucketPolicy", 404, "The bucket policy does not exist")
NoSuchTagSet = _error("NoSuchTagSet", 404, "The TagSet does not exist")
NoSuchCORSConfiguration = _error("NoSuchCORSConfiguration", 404, "The CORS configuration does not exist")
NoSuchLifecycleConfiguration = _error("NoSuchLifecycleConfiguration", 404,
                                      "The lifecycle configuration does not exist")
ServerSideEncryptionConfigurationNotFoundError = _error(
    "ServerSideEncryptionConfigurationNotFoundError", 404,
    "The server side encryption configuration was not found")
NoSuchObjectLockConfiguration = _error("NoSuchObjectLockConfiguration", 404,
                                       "Object Lock configuration does not exist for this bucket")
NoSuchWebsiteConfiguration = _error("NoSuchWebsiteConfiguration", 404,
                                    "The specified bucket does not have a website configuration")
ReplicationConfigurationNotFoundError = _error("ReplicationConfigurationNotFoundError", 404,
                                               "The replication configuration was not found")
ObjectLockConfigurationNotFoundError = _error("ObjectLockConfigurationNotFoundError", 404,
                                              "Object Lock configuration does not exist for this bucket")

BucketAlreadyExists = _error("BucketAlreadyExists", 409,
                             "The requested bucket name is not available. The bucket namespace is "
                             "shared by all users of the system. Please select a different name and try again.")
BucketAlreadyOwnedByYou = _error("BucketAlreadyOwnedByYou", 409,
                                 "Your previous request to create the named bucket succeeded and you already own it.")
BucketNotEmpty = _error("BucketNotEmpty", 409, "The bucket you tried to delete is not empty")
OperationAborted = _error("OperationAborted", 409,
                          "A conflicting conditional operation is currently in progress against this "
                          "resource. Please try again.")
ConditionalRequestConflict = _error("ConditionalRequestConflict", 409,
                                    "The conditional request cannot succeed due to a conflicting "
                                    "operation against this resource.")
InvalidRange = _error("InvalidRange", 416, "The requested range is not satisfiable")
InvalidPartNumber = _error("InvalidPartNumber", 416, "The requested partnumber is not satisfiable")
PreconditionFailed = _error("PreconditionFailed", 412,
                            "At least one of the pre-conditions you specified did not hold")
NotModified = _error("NotModified", 304, "Not Modified")
MethodNotAllowed = _error("MethodNotAllowed", 405,
                          "The specified method is not allowed against this resource.")
NotImplemented = _error("NotImplemented", 501,
                        "A header you provided implies functionality that is not implemented")
MissingContentLength = _error("MissingContentLength", 411,
                              "You must provide the Content-Length HTTP header.")
InternalError = _error("InternalError", 500, "We encountered an internal error. Please try again.")
ServiceUnavailable = _error("ServiceUnavailable", 503, "Please reduce your request rate.")
SlowDown = _error("SlowDown", 503, "Please reduce your request rate.")

ERRORS_BY_CODE: dict[str, type[S3Error]] = {
    cls.code: cls for cls in (globals()[n] for n in __all__
                              if n not in ("S3Error", "error_response", "xml_text", "xml_forbidden", "ERRORS_BY_CODE"))
}


def error_response(err: S3Error, *, resource: str, request_id: str,
                   head: bool = False) -> tuple[int, list[tuple[str, str]], bytes]:
    """Render ``err`` as ``(status, headers, body)``.

    The body is S3's ``<Error>`` document; HEAD requests and 304 carry headers only (boto3 then
    reports the bare status). Headers are ``content-type`` plus whatever ``err.headers`` holds;
    the gateway adds ``x-amz-request-id`` / ``x-amz-id-2`` as on every response.
    """
    status = err.http_status
    headers = list(err.headers)
    if head or status == 304:
        return status, headers, b""
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<Error>',
             f"<Code>{xml_text(err.code)}</Code>",
             f"<Message>{xml_text(err.message)}</Message>"]
    for name, value in err.extra.items():
        parts.append(f"<{name}>{xml_text(_text(value))}</{name}>")
    parts.append(f"<Resource>{xml_text(err.resource if err.resource is not None else resource)}</Resource>")
    parts.append(f"<RequestId>{xml_text(request_id)}</RequestId></Error>")
    body = "".join(parts).encode("utf-8")
    headers.append(("content-type", "application/xml"))
    return status, headers, body


# Characters XML 1.0 cannot carry at all, not even as a character reference (section 2.2).
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XML_ESCAPE = re.compile("[&<>\r]")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#xD;"}  # CR: parsers turn a bare one into LF


def xml_forbidden(value: str) -> bool:
    """Whether ``value`` holds a character no XML 1.0 document can carry."""
    return _XML_FORBIDDEN.search(value) is not None


def xml_text(value: str) -> str:
    """Escape text for element content. Characters XML 1.0 forbids become U+FFFD: they only
    reach here in echoed text (messages, a requested key or marker), and ``&#x0;`` would make the
    whole document unparseable. Listings refuse them instead (``xmlio``)."""
    value = _XML_FORBIDDEN.sub("\ufffd", value)
    if not _XML_ESCAPE.search(value):
        return value
    return _XML_ESCAPE.sub(lambda m: _ESCAPES[m.group()], value)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


