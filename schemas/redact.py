"""Credentials out of everything a build writes or prints: sources, sample json, error texts, logs.

A source may carry a secret in its URL: userinfo (`https://user:pass@host/v.mp4`, `s3://KEY:SECRET@bucket`)
or a presigned query (S3's X-Amz-Signature / X-Amz-Credential / X-Amz-Security-Token, GCS's X-Goog-*,
CloudFront's Signature / Policy / Key-Pair-Id, Azure's sig, `token=`, `key=`). The downloader needs the real
URL, so the record keeps it in memory (VideoRecord.locator); what is written goes through `redact`, which
drops the userinfo and those query parameters (an Expires beside a signature too: it changes with every
signing). A re-signed link of the same object therefore reads the same once redacted, and gets the same
video_id.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Any scheme://... run up to whitespace or a quote: URLs inside free text (error messages, logs).
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
# user:password@ before a host outside any URL: yt-dlp's info dict has `webpage_url_domain` as the netloc.
_BARE_USERINFO = re.compile(r"(?<![\w/@:.-])[^\s'\"<>`/@:]+:[^\s'\"<>`/@]+@(?=[\w.-]+)")
# Query parameter names that carry a credential, lowercased; plus every x-amz-* and x-goog-* one.
_SECRET_PARAMS = frozenset(
    {
        "signature",
        "sig",
        "token",
        "key",
        "policy",
        "key-pair-id",
        "access_token",
        "api_key",
        "apikey",
        "password",
        "secret",
        "auth",
        "credential",
    }
)
_SECRET_WORDS = ("token", "secret", "password", "signature", "credential")


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return (
        lowered in _SECRET_PARAMS
        or lowered.startswith(("x-amz-", "x-goog-"))
        or any(word in lowered for word in _SECRET_WORDS)
    )


def redact_url(url: str) -> str:
    """One URL without its userinfo and credential query parameters; anything else unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unparsable netloc: keep nothing that could be userinfo
        return re.sub(r"(://)[^/@\s]*@", r"\1", url)
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        secret = [name for name, _ in pairs if _is_secret(name)]
        if secret:
            kept = [(name, value) for name, value in pairs if not _is_secret(name) and name.lower() != "expires"]
            query = urlencode(kept)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str | None) -> str | None:
    """Text (a source, an error message, a log line) with every URL in it redacted (redact_url)."""
    if not text or "@" not in text and "://" not in text:
        return text
    return _BARE_USERINFO.sub("", _URL.sub(_redact_match, text))


def _redact_match(match: re.Match) -> str:
    # Punctuation that ends a sentence or closes a bracket around the URL stays outside it.
    url = match.group(0)
    body = url.rstrip(".,;:!?)]}")
    return redact_url(body) + url[len(body) :]
