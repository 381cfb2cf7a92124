"""Access control lists on writes (``x-amz-acl``, ``x-amz-grant-*``), answered as S3 answers them
for a bucket whose Object Ownership is "bucket owner enforced", sans-IO.

Here every bucket and object is its owner's alone: ACLs are not kept. New S3 buckets work the
same way since April 2023 (ACLs disabled, Block Public Access on), and S3 then refuses a write
whose ACL would grant anyone else access instead of storing the object without it ("Troubleshooting
Object Ownership", AccessControlListNotSupported). So does the gateway: an upload asked to be
``public-read`` must fail, not be stored private while the client believes it public.

- PutObject, CopyObject, CreateMultipartUpload: a canned ACL that grants only the owner
  (``private``, ``bucket-owner-full-control``, ``bucket-owner-read``: the writer owns the bucket)
  is accepted, it being what is stored anyway; any other canned ACL or any ``x-amz-grant-*``
  header is 400 AccessControlListNotSupported. An enforced S3 bucket takes only
  ``bucket-owner-full-control``; ``private`` passes here too because rclone's common
  ``acl = private`` sends it on CreateBucket and every write, and S3 makes a bucket created with
  ``x-amz-acl: private`` one whose ACLs are enabled ("bucket owner preferred"), where it passes.
- CreateBucket: ``private`` is accepted (S3 accepts it too; rclone sends its ``acl`` on
  CreateBucket unless ``bucket_acl`` says otherwise); another canned ACL or a grant is 400
  InvalidBucketAclWithObjectOwnership for a bucket that would be made. The name is judged first:
  re-creating one's own bucket answers as it does without an ACL (rclone "creates" the bucket
  before a copyto, with the object's ACL), another's bucket BucketAlreadyExists.
- A canned ACL that is none of S3's is 400 InvalidArgument.

GetBucketAcl and GetObjectAcl answer that truth (:func:`access_control_policy`): the owner, with
one grant of FULL_CONTROL to the owner. PutBucketAcl and PutObjectAcl (:func:`check_put_acl`)
change nothing and say so: what grants only the owner (an owner-only canned ACL as above, or an
``<AccessControlPolicy>`` whose every grant is FULL_CONTROL to the owner's CanonicalUser) is
what is there already and passes; anything else is AccessControlListNotSupported, S3's answer
for a bucket whose ACLs are disabled ("PUT requests that specify bucket-owner-full-control
canned ACL or equivalent forms of this ACL expressed in XML format succeed"; others fail with
that code); a document that is no ACL is MalformedACLError.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree as ET

from headwater.http.types import Headers

from . import xmlio
from .errors import (AccessControlListNotSupported, InvalidArgument, InvalidBucketAclWithObjectOwnership,
                     MalformedACLError, MalformedXML, S3Error, UnexpectedContent, xml_text)

__all__ = ["CANNED_ACLS", "MAX_DOCUMENT_BYTES", "MAX_GRANTS", "Grant", "check_acl", "bucket_acl_error",
           "access_control_policy", "parse_access_control_policy", "check_put_acl"]

#: S3's canned ACLs (the user guide's "Canned ACL" table).
CANNED_ACLS = frozenset({"private", "public-read", "public-read-write", "aws-exec-read", "authenticated-read",
                         "bucket-owner-read", "bucket-owner-full-control", "log-delivery-write"})
_OWNER_ONLY_OBJECT = frozenset({"private", "bucket-owner-read", "bucket-owner-full-control"})
_OWNER_ONLY_BUCKET = frozenset({"private"})
_OBJECT_WRITES = frozenset({"PutObject", "CopyObject", "CreateMultipartUpload"})
GRANT_PREFIX = "x-amz-grant-"


def _grant_headers(headers: Headers) -> bool:
    """Whether the request names grantees in ``x-amz-grant-*`` headers."""
    return any(name.lower().startswith(GRANT_PREFIX) for name, _ in headers)


def _refusal(headers: Headers, owner_only: frozenset[str], refused: type[S3Error]) -> S3Error | None:
    canned = headers.get("x-amz-acl")
    if canned is not None:
        canned = canned.strip()
        if canned not in CANNED_ACLS:
            return InvalidArgument(None, ArgumentName="x-amz-acl", ArgumentValue=canned)
        if canned not in owner_only:
            return refused()
    if _grant_headers(headers):
        return refused()
    return None


def check_acl(operation: str, headers: Headers) -> None:
    """Raise the S3 error for an ACL that an object write (``operation``, the routed S3
    operation) cannot keep; other operations pass (CreateBucket: :func:`bucket_acl_error`)."""
    if operation in _OBJECT_WRITES:
        err = _refusal(headers, _OWNER_ONLY_OBJECT, AccessControlListNotSupported)
        if err is not None:
            raise err


def bucket_acl_error(headers: Headers) -> S3Error | None:
    """The error a CreateBucket with these headers gets if it would make the bucket, or None."""
    return _refusal(headers, _OWNER_ONLY_BUCKET, InvalidBucketAclWithObjectOwnership)


# --- ?acl: the ACL every bucket and object has, and the only one a PUT may "set" ---------------------

#: S3 keeps at most 100 grants in an ACL ("Access control list (ACL) overview"); a document past
#: that is refused at the first grant too many. 100 grants of the longest IDs and URIs fit in far
#: less than this bound, which is checked before parsing.
MAX_GRANTS = 100
MAX_DOCUMENT_BYTES = 64 * 1024
XSI = "http://www.w3.org/2001/XMLSchema-instance"
PERMISSIONS = frozenset({"FULL_CONTROL", "WRITE", "WRITE_ACP", "READ", "READ_ACP"})
#: Grantee xsi:type -> the element naming who (the reference's ``Grantee`` data type).
_GRANTEE_FIELDS = {"CanonicalUser": "ID", "Group": "URI", "AmazonCustomerByEmail": "EmailAddress"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """One grant of an ``<AccessControlPolicy>`` as sent: who (by type: an ID, a group URI or an
    e-mail address) is given which permission."""

    grantee_type: str
    grantee: str
    permission: str


def access_control_policy(owner_id: str, display_name: str) -> bytes:
    """GetBucketAcl / GetObjectAcl's body: ``owner`` owns it and holds the one grant,
    FULL_CONTROL (the ACL S3 reports for a bucket or object whose ACLs are disabled)."""
    who = f"<ID>{xml_text(owner_id)}</ID><DisplayName>{xml_text(display_name)}</DisplayName>"
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<AccessControlPolicy xmlns="{xmlio.NS}">'
            f"<Owner>{who}</Owner><AccessControlList><Grant>"
            f'<Grantee xmlns:xsi="{XSI}" xsi:type="CanonicalUser">{who}</Grantee>'
            "<Permission>FULL_CONTROL</Permission></Grant></AccessControlList>"
            "</AccessControlPolicy>").encode("utf-8")


def _fields(el: ET.Element, allowed: frozenset[str]) -> dict[str, str]:
    """``el``'s text children by name, each allowed at most once (else MalformedACLError)."""
    out: dict[str, str] = {}
    for name, child in xmlio.children(el):
        if name not in allowed or name in out:
            raise MalformedACLError(f"Unexpected element <{name}>")
        out[name] = xmlio.text_of(child).strip()
    return out


def parse_access_control_policy(body: bytes) -> tuple[str | None, list[Grant]]:
    """A PutBucketAcl / PutObjectAcl body -> (the Owner's ID if given, the grants).

    Parsed as every request document is (``xmlio``: defusedxml, no DTD or entity, size bound,
    S3 namespace or none); whatever is not an ``<AccessControlPolicy>`` of the reference's shape
    (an AccessControlList of Grants, each a typed Grantee naming who and a known Permission;
    at most :data:`MAX_GRANTS`) is MalformedACLError."""
    try:
        root = xmlio.parse_root(body, "AccessControlPolicy", MAX_DOCUMENT_BYTES)
        owner: str | None = None
        lists = []
        for name, el in xmlio.children(root):
            if name == "Owner" and owner is None:
                fields = _fields(el, frozenset({"ID", "DisplayName"}))
                if "ID" not in fields:
                    raise MalformedACLError("The Owner needs an ID")
                owner = fields["ID"]
            elif name == "AccessControlList" and not lists:
                lists.append(el)
            else:
                raise MalformedACLError(f"Unexpected element <{name}> in AccessControlPolicy")
        if not lists:
            raise MalformedACLError("An AccessControlPolicy needs an AccessControlList")
        grants: list[Grant] = []
        for name, el in xmlio.children(lists[0]):
            if name != "Grant":
                raise MalformedACLError(f"Unexpected element <{name}> in AccessControlList")
            if len(grants) >= MAX_GRANTS:
                raise MalformedACLError(f"An ACL holds at most {MAX_GRANTS} grants")
            grants.append(_grant(el))
        return owner, grants
    except MalformedXML as e:
        raise MalformedACLError(e.message) from None


def _grant(el: ET.Element) -> Grant:
    grantee = permission = None
    for name, child in xmlio.children(el):
        if name == "Grantee" and grantee is None:
            grantee = child
        elif name == "Permission" and permission is None:
            permission = xmlio.text_of(child).strip()
        else:
            raise MalformedACLError(f"Unexpected element <{name}> in Grant")
    if grantee is None or permission not in PERMISSIONS:
        raise MalformedACLError("A Grant needs a Grantee and a Permission (FULL_CONTROL, WRITE, WRITE_ACP, "
                                "READ or READ_ACP)")
    kind = grantee.get(f"{{{XSI}}}type", "")
    field = _GRANTEE_FIELDS.get(kind)
    if field is None:
        raise MalformedACLError("A Grantee's xsi:type must be CanonicalUser, Group or AmazonCustomerByEmail")
    fields = _fields(grantee, frozenset({field, "DisplayName"}))
    if field not in fields:
        raise MalformedACLError(f"A {kind} Grantee needs its {field}")
    return Grant(grantee_type=kind, grantee=fields[field], permission=permission)


def check_put_acl(headers: Headers, body: bytes, *, owner_id: str) -> None:
    """Pass a PutBucketAcl / PutObjectAcl that grants only the owner (it changes nothing: that
    is the ACL there is); raise S3's error for any other (see the module's docstring).

    The ACL comes from the headers (a canned ``x-amz-acl`` or ``x-amz-grant-*``) or from the
    body, not both (S3: UnexpectedContent)."""
    if headers.get("x-amz-acl") is not None or _grant_headers(headers):
        if body.strip():
            raise UnexpectedContent("This request does not support content when an ACL is given in headers")
        err = _refusal(headers, _OWNER_ONLY_OBJECT, AccessControlListNotSupported)
        if err is not None:
            raise err
        return
    owner, grants = parse_access_control_policy(body)
    owner_only = all(g.grantee_type == "CanonicalUser" and g.grantee == owner_id and g.permission == "FULL_CONTROL"
                     for g in grants)
    if not grants or not owner_only or owner not in (None, owner_id):
        raise AccessControlListNotSupported()
