"""XML bodies of the COS XML API: building answers and parsing the few request bodies we accept."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from faceid_sim.cos_objects import ObjectMeta, PartInfo, StoreError, Upload

# A tree is a list of (tag, text-or-subtree) pairs; repeated tags are simply repeated pairs.
Tree = Sequence[tuple[str, Any]]


def _fill(parent: ET.Element, items: Tree) -> None:
    for tag, value in items:
        child = ET.SubElement(parent, tag)
        if isinstance(value, list | tuple):
            _fill(child, value)
        else:
            child.text = str(value)


def xml_body(root: str, items: Tree) -> bytes:
    """Serialise ``items`` under a ``root`` element, with an XML declaration."""
    element = ET.Element(root)
    _fill(element, items)
    return ET.tostring(element, encoding="utf-8", xml_declaration=True)


def iso8601(ts: float) -> str:
    """COS timestamp format in listings."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def _encoder(url_encoding: bool) -> Callable[[str], str]:
    return (lambda k: quote(k, safe="/-_.~")) if url_encoding else (lambda k: k)


def error_xml(code: str, message: str, resource: str, request_id: str, trace_id: str) -> bytes:
    """The <Error> document COS returns with 4xx/5xx answers."""
    return xml_body(
        "Error",
        [
            ("Code", code),
            ("Message", message),
            ("Resource", resource),
            ("RequestId", request_id),
            ("TraceId", trace_id),
        ],
    )


def list_bucket_xml(
    bucket: str,
    prefix: str,
    marker: str,
    max_keys: int,
    page: list[ObjectMeta],
    truncated: bool,
    url_encoding: bool,
) -> bytes:
    """ListBucketResult for GET Bucket (list objects)."""
    enc = _encoder(url_encoding)
    items: list[tuple[str, Any]] = [("Name", bucket)]
    if url_encoding:
        items.append(("EncodingType", "url"))
    items += [
        ("Prefix", enc(prefix)),
        ("Marker", enc(marker)),
        ("MaxKeys", max_keys),
        ("IsTruncated", "true" if truncated else "false"),
    ]
    if truncated and page:
        items.append(("NextMarker", enc(page[-1].key)))
    for m in page:
        items.append(
            (
                "Contents",
                [
                    ("Key", enc(m.key)),
                    ("LastModified", iso8601(m.last_modified)),
                    ("ETag", m.etag),
                    ("Size", m.size),
                    ("StorageClass", "STANDARD"),
                ],
            )
        )
    return xml_body("ListBucketResult", items)


def list_parts_xml(
    bucket: str,
    key: str,
    upload_id: str,
    marker: int,
    max_parts: int,
    page: list[PartInfo],
    truncated: bool,
    url_encoding: bool,
) -> bytes:
    """ListPartsResult for GET Object ?uploadId=."""
    items: list[tuple[str, Any]] = [("Bucket", bucket)]
    if url_encoding:
        items.append(("EncodingType", "url"))
    items += [
        ("Key", _encoder(url_encoding)(key)),
        ("UploadId", upload_id),
        ("StorageClass", "STANDARD"),
        ("PartNumberMarker", marker),
        ("NextPartNumberMarker", page[-1].number if page else marker),
        ("MaxParts", max_parts),
        ("IsTruncated", "true" if truncated else "false"),
    ]
    for p in page:
        items.append(
            (
                "Part",
                [
                    ("PartNumber", p.number),
                    ("LastModified", iso8601(p.last_modified)),
                    ("ETag", p.etag),
                    ("Size", p.size),
                ],
            )
        )
    return xml_body("ListPartsResult", items)


def list_uploads_xml(
    bucket: str, prefix: str, max_uploads: str, uploads: list[Upload], url_encoding: bool
) -> bytes:
    """ListMultipartUploadsResult for GET Bucket ?uploads."""
    enc = _encoder(url_encoding)
    items: list[tuple[str, Any]] = [("Bucket", bucket)]
    if url_encoding:
        items.append(("EncodingType", "url"))
    items += [("Prefix", enc(prefix)), ("MaxUploads", max_uploads), ("IsTruncated", "false")]
    for up in uploads:
        items.append(
            (
                "Upload",
                [
                    ("Key", enc(up.key)),
                    ("UploadId", up.upload_id),
                    ("StorageClass", "STANDARD"),
                    ("Initiated", iso8601(up.initiated)),
                ],
            )
        )
    return xml_body("ListMultipartUploadsResult", items)


def _local(tag: str) -> str:
    # Clients may or may not put the document in a namespace.
    return tag.rsplit("}", 1)[-1]


def _parse(raw: bytes, root_name: str) -> ET.Element:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        raise StoreError("MalformedXML", "The XML you provided was not well-formed.") from None
    if _local(root.tag) != root_name:
        raise StoreError("MalformedXML", f"Expected a <{root_name}> document.")
    return root


def parse_complete(raw: bytes) -> list[tuple[int, str]]:
    """(PartNumber, ETag) pairs of a <CompleteMultipartUpload> body, in document order."""
    parts = []
    for part in _parse(raw, "CompleteMultipartUpload"):
        if _local(part.tag) != "Part":
            continue
        fields = {_local(c.tag): (c.text or "") for c in part}
        try:
            parts.append((int(fields["PartNumber"]), fields["ETag"]))
        except (KeyError, ValueError):
            raise StoreError("MalformedXML", "Each <Part> needs PartNumber and ETag.") from None
    return parts


def parse_delete(raw: bytes) -> tuple[list[str], bool]:
    """(keys, quiet) of a <Delete> body for DeleteMultipleObjects."""
    keys, quiet = [], False
    for child in _parse(raw, "Delete"):
        name = _local(child.tag)
        if name == "Quiet":
            quiet = (child.text or "").strip().lower() == "true"
        elif name == "Object":
            for c in child:
                if _local(c.tag) == "Key" and c.text:
                    keys.append(c.text)
    return keys, quiet
